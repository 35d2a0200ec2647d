"""`towerzoo push MODEL_DIR REPO_ID`: upload a towerzoo Hub folder to the Hugging Face Hub (or the server `HF_ENDPOINT`
names), after checking that it loads as a Hub user would load it."""

import argparse
import sys
from pathlib import Path

# never uploaded: temporary and partial files, Python caches, notebook checkpoints, evaluation work folders
# (huggingface_hub itself skips .git/ and its own .cache/huggingface/); `*` crosses "/" in these patterns
IGNORE_PATTERNS = [
    "*.tmp*",
    "*.partial",
    "__pycache__",
    "*/__pycache__/*",
    "*.pyc",
    ".ipynb_checkpoints",
    "*/.ipynb_checkpoints/*",
    "*.work/*",
]
# ASCII letters and digits plus these are all the Hub accepts in a repo id
REPO_ID_PUNCTUATION = "-_./"


class PushError(ValueError):
    """A folder cannot be pushed; the message names the problem and the fix."""


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id the Hub would refuse, naming the offending characters and the rule."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    illegal = sorted({c for c in repo_id if not (c.isascii() and (c.isalnum() or c in REPO_ID_PUNCTUATION))})
    rule = (
        "A repo id is NAME or NAMESPACE/NAME, each part 1-96 ASCII letters, digits, '-', '_' or '.', not starting "
        "or ending with '-' or '.', without '--' or '..', and not ending in '.git'."
    )
    if illegal:
        shown = ", ".join(repr(c) for c in illegal)
        raise PushError(f"{repo_id!r} is not a valid repo id: it contains {shown}. {rule}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PushError(f"{repo_id!r} is not a valid repo id. {rule}") from None


def resolve_token(token: str | None = None) -> str:
    """`token`, else `HF_TOKEN`, else the token stored by `hf auth login`; refuse to go on without one."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PushError(
            "no Hugging Face token: set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or log in once with `hf auth login`."
        )
    return token


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload `folder` to the model repo `repo_id` (created if missing; private if `private`, else the namespace's
    default) on branch `revision` (created from main if missing). Checks the repo id, the token and that the folder
    loads in a fresh process before any request. Returns the commit's URL."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    token = resolve_token(token)
    if constants.HF_HUB_OFFLINE:
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it to push.")

    # imported only now: they load torch and transformers, which the checks above do not need
    from towerzoo.conversions.common import ConversionError
    from towerzoo.conversions.hub_folder import check_folder_loads

    folder = Path(folder)
    try:
        check_folder_loads(folder)
    except ConversionError as error:
        raise PushError(f"refusing to push: {error}") from None

    api = HfApi(token=token)
    # every error of the HTTP client (refused connections included) derives from HfHubHTTPError's first base class
    http_errors = (HfHubHTTPError, HfHubHTTPError.__bases__[0])
    try:
        repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        repo_id = repo_url.repo_id  # a bare NAME lands in the token owner's namespace
        if private and not api.repo_info(repo_id).private:
            raise PushError(
                f"{repo_id} already exists and is public; --private does not change an existing repo's visibility. "
                "Make it private in its settings on the Hub first, or push without --private."
            )
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or f"Upload {folder.resolve().name} with towerzoo push",
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except http_errors as error:
        reason = " ".join(str(error).split())
        if getattr(getattr(error, "response", None), "status_code", None) in (401, 403):
            reason += " — check that the token (HF_TOKEN or `hf auth login`) is valid and may write to this repo."
        raise PushError(f"could not push to {repo_id} on {constants.ENDPOINT}: {reason}") from None
    return commit.commit_url


def _push(args: argparse.Namespace) -> int:
    try:
        url = push_folder(
            args.model_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
        )
    except PushError as error:
        print(f"towerzoo push: error: {error}", file=sys.stderr)
        return 2
    print(f"pushed {args.model_dir} to {args.repo_id} ({args.revision or 'main'}): {url}")
    return 0


def add_parsers(commands) -> None:
    """`towerzoo push`, on the main parser's subcommands."""
    push = commands.add_parser(
        "push",
        help="upload a Hub folder to the Hugging Face Hub after checking that it loads",
        description="Check that MODEL_DIR loads with trust_remote_code in a fresh process without towerzoo, then "
        "create REPO_ID if needed and upload the folder in one commit. The token comes from HF_TOKEN or "
        "`hf auth login`; HF_ENDPOINT selects another Hub.",
    )
    push.add_argument("model_dir", type=Path, help="a Hub folder written by `towerzoo convert`")
    push.add_argument("repo_id", help="NAMESPACE/NAME (or NAME, in the token owner's namespace)")
    push.add_argument(
        "--private", action="store_true", help="create the repo private (refuses an existing public repo)"
    )
    push.add_argument("--revision", help="branch to commit to, created from main if missing (default: main)")
    push.add_argument("--commit-message", help="the commit's title (default: 'Upload NAME with towerzoo push')")
    push.set_defaults(handler=_push)
