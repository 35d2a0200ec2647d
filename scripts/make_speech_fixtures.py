"""Regenerate the speech fixtures in tests/data/speech/ with espeak-ng (run once; CI reads the committed files and
needs no espeak-ng):

- `librispeech/`: two speakers' chapters in LibriSpeech's layout (`<speaker>/<chapter>/<id>.flac`, 16 kHz 16-bit
  FLAC, and `<speaker>-<chapter>.trans.txt` with upper-cased transcripts);
- `audiofolder/test/`: a Hugging Face audiofolder split (`metadata.csv` with `file_name,transcription`) holding
  copies of two of those files with mixed-case, punctuated transcripts, as such datasets carry them.

    python scripts/make_speech_fixtures.py [OUTPUT_DIR]   # default: tests/data/speech

espeak-ng output is deterministic for one espeak-ng version (1.51 wrote the committed files).
"""

import argparse
import csv
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from speech_fixtures import write_librispeech_fixture  # noqa: E402

# (speaker, chapter) -> sentences, short so that the folder stays small (about 1.5 s each)
CHAPTERS = {
    ("1089", "134686"): [
        "a cat sits on the mat",
        "two dogs play in the park",
        "what color is the cat",
        "don't open the red door",
        "she reads a short book",
    ],
    ("121", "121726"): ["we walk to the river", "the sun is warm today", "how many dogs are there"],
}
# audiofolder rows: (file name, source utterance id, transcript as written in the dataset)
AUDIOFOLDER = [
    ("cat.flac", "1089-134686-0000", "A cat sits on the mat."),
    ("door.flac", "1089-134686-0003", "Don't open the red door!"),
]


def make_fixtures(output: Path) -> None:
    """Write both layouts under `output` (replacing what is there)."""
    shutil.rmtree(output, ignore_errors=True)
    audio = {}
    for (speaker, chapter), sentences in CHAPTERS.items():
        for utterance_id, path, _ in write_librispeech_fixture(output / "librispeech", sentences, speaker, chapter):
            audio[utterance_id] = path
    split = output / "audiofolder" / "test"
    split.mkdir(parents=True)
    with (split / "metadata.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["file_name", "transcription"])
        for file_name, utterance_id, transcript in AUDIOFOLDER:
            shutil.copyfile(audio[utterance_id], split / file_name)
            writer.writerow([file_name, transcript])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=REPO / "tests" / "data" / "speech")
    make_fixtures(parser.parse_args().output)


if __name__ == "__main__":
    main()
