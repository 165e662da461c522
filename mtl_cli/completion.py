"""Shell completion for `mtl train` overrides: Hydra's completion, called the way a subcommand needs.

Hydra's own bash script takes the command to call from the first word of the line, so for
`mtl train shar<TAB>` it would run `mtl -sc query=bash` (no such mtl command) and hand `train`
to Hydra as an override. The script below calls `mtl train -sc query=bash` instead, and `query`
drops `mtl train` from the line before Hydra reads it. Task names are completed here, not by
Hydra: tasks live in subfolders (`task=sentences/yelp`) and are joined with `+`, neither of
which Hydra's group completion knows.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable

from mtl_cli.compose import known_options
from mtl_cli.errors import MtlError

# cli.py passes its own `rewrite_overrides` and `hydra_train` in (this module must not import
# cli.py, which imports it): the first turns mtl's `task=a+b` into Hydra's form, the second
# runs `@hydra.main` with the current sys.argv.
Rewrite = Callable[[list[str]], list[str]]
RunHydra = Callable[[], None]

# zsh reads the same script after `autoload -Uz bashcompinit && bashcompinit` (as Hydra's zsh
# support does); fish would need a script of its own.
SHELLS = ("bash", "zsh")

BASH_SCRIPT = r"""# mtl shell completion; load it with: eval "$(mtl train --shell-completion install=bash)"
_mtl_completion()
{
    local cur="${COMP_WORDS[COMP_CWORD]}"
    if (( COMP_CWORD == 1 )); then
        COMPREPLY=($(compgen -W "train eval transfer report data tasks" -- "$cur"))
        return
    fi
    # Only `mtl train` is completed from the configs; elsewhere `-o default` offers file names.
    [[ "${COMP_WORDS[1]}" == train ]] || return
    # The line up to the cursor, so a word in the middle of the line completes correctly.
    local choices
    choices=$(COMP_LINE="${COMP_LINE:0:COMP_POINT}" "${COMP_WORDS[0]}" train -sc query=bash 2>/dev/null)
    COMPREPLY=($(compgen -W "$choices" -- "$cur"))
}
# `sharing=hard` must stay one word for bash (Hydra's script makes the same change).
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _mtl_completion mtl
"""

UNINSTALL_SCRIPT = "complete -r mtl 2>/dev/null\nunset -f _mtl_completion\n"


def shell_completion(request: str, rewrite: Rewrite, run_hydra: RunHydra) -> None:
    """Handle `mtl train --shell-completion install|uninstall|query=<shell>`."""
    command, _, shell = request.partition("=")
    if command not in ("install", "uninstall", "query") or shell not in SHELLS:
        raise MtlError(
            f"unknown --shell-completion value '{request}'; use install=bash (zsh: install=zsh after bashcompinit)"
        )
    if command == "install":
        print(BASH_SCRIPT, end="")
    elif command == "uninstall":
        print(UNINSTALL_SCRIPT, end="")
    else:
        print(" ".join(query(os.environ.get("COMP_LINE", ""), rewrite, run_hydra)))


def query(line: str, rewrite: Rewrite, run_hydra: RunHydra) -> list[str]:
    """Candidates for the last word of `line` (`mtl train ...` up to the cursor)."""
    words = line.split()[2:]  # without `mtl train`
    current = "" if not words or line.endswith(" ") else words.pop()
    done = rewrite(words)  # `task=a+b` -> `task=[a,b]`, the form Hydra composes
    if current.startswith("task="):
        return task_candidates(current, config_dirs(done))
    # Hydra reads the line from COMP_LINE and drops its first word (the program name).
    os.environ["COMP_LINE"] = " ".join(["mtl", *done, current])
    sys.argv = ["mtl train", "-sc", "query=bash"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_hydra()
    # `task` is a group with subfolders, so Hydra offers the bare word; mtl writes `task=a+b`.
    return ["task=" if word == "task" else word for word in out.getvalue().split()]


def task_candidates(current: str, extra_dirs: list[str]) -> list[str]:
    """`task=sentences/yelp+sen` -> `task=sentences/yelp+sentences/imdb`, ...: the last `+` part completed."""
    chosen, plus, partial = current.removeprefix("task=").rpartition("+")
    head = f"task={chosen}{plus}"
    taken = set(chosen.split("+"))
    return [head + name for name in known_options("task", extra_dirs) if name.startswith(partial) and name not in taken]


def config_dirs(args: list[str]) -> list[str]:
    """The `--config-dir DIR` / `-cd DIR` values on the line: the user's own tasks live there."""
    pairs = zip(args, args[1:], strict=False)  # each word with the next one
    dirs = [value for flag, value in pairs if flag in ("--config-dir", "-cd")]
    return dirs + [a.partition("=")[2] for a in args if a.startswith("--config-dir=")]
