import sys

from towerzoo.cli import main

sys.exit(main())
