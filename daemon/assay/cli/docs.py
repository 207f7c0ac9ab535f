"""Man pages and shell completion, generated from the command line's own parser.

    python -m assay.cli.docs --man DIR --completion DIR

writes ``DIR/assay.1`` and one page per command (``assay-add.1``, ``assay-relay.1``,
``assay-relay-serve.1``, ...), the bash completion file ``DIR/assay`` (for
``/usr/share/bash-completion/completions/``) and the zsh one, ``DIR/_assay`` (for
``/usr/share/zsh/vendor-completions/``). ``manpages(DIR)`` and ``completions(DIR)`` do
the same from Python. Set ``SOURCE_DATE_EPOCH`` for a reproducible date. The Debian
package builds and installs them; ``tests/unit/test_cli_docs.py`` renders every page
with groff and drives the completion through bash and zsh, so they stay in step with
the parser: one parser decides what the commands are, and the help, the pages and the
completion all come from it.

Why not argparse-manpage or shtab: both are small, but neither is a dependency of assay,
and this needs only argparse's own structures; a build then needs nothing extra.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from assay import __version__

#: Metavars whose value is a path: the completion offers files (or directories).
FILE_METAVARS = frozenset({"FILE", "LOG", "PROOF", "RECEIPT", "JWS"})
DIR_METAVARS = frozenset({"DIR"})


@dataclass(frozen=True)
class Node:
    """One command in the tree: ``("relay", "serve")`` and its parser."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str
    children: tuple[str, ...]

    @property
    def page(self) -> str:
        return "-".join(("assay", *self.path))

    @property
    def command(self) -> str:
        return " ".join(("assay", *self.path))


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def walk(parser: argparse.ArgumentParser) -> Iterator[Node]:
    """Every command, groups and leaves, parents before children."""
    pending: list[tuple[tuple[str, ...], argparse.ArgumentParser, str]] = [
        ((), parser, parser.description or "")
    ]
    for _ in range(10_000):  # bounded: the tree has a few dozen nodes
        if not pending:
            return
        path, p, helptext = pending.pop(0)
        sub = _subparsers(p)
        helps = {a.dest: a.help or "" for a in sub._choices_actions} if sub else {}
        children = tuple(sub.choices) if sub else ()
        yield Node(path, p, helptext, children)
        for name in children:
            assert sub is not None
            pending.append(((*path, name), sub.choices[name], helps.get(name, "")))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


# -- man pages --------------------------------------------------------------------------


def roff(text: str) -> str:
    """Text safe for a roff line: backslashes, hyphens of options, leading dots."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in out.split("\n"))


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    return " ".join(usage.removeprefix("usage:").split())


def _action_heading(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"\\fI{roff(str(action.metavar or action.dest))}\\fR"
    metavar = ""
    if takes_value(action):
        mv = action.metavar or action.dest.upper()
        metavar = " " + " ".join(
            f"\\fI{roff(str(m))}\\fR" for m in (mv if isinstance(mv, tuple) else (mv,))
        )
    return ", ".join(f"\\fB{roff(flag)}\\fR{metavar}" for flag in action.option_strings)


def _action_help(action: argparse.Action) -> str:
    text = action.help or ""
    if action.choices and not all(str(c) in text for c in action.choices):
        text += f" (one of: {', '.join(map(str, action.choices))})"
    if action.required and action.option_strings:
        text += " (required)"
    if isinstance(action, argparse._AppendAction):
        text += " (may be repeated)"
    return roff(text)


def build_date() -> str:
    """The build's date (SOURCE_DATE_EPOCH, for reproducible packages), else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = time.gmtime(int(epoch)) if epoch and epoch.isdigit() else time.gmtime()
    return time.strftime("%Y-%m-%d", moment)


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def man_page(node: Node, nodes: Sequence[Node], *, date: str) -> str:
    from assay.cli.main import EPILOG, SUMMARY

    title = node.page.upper()
    summary = node.help if node.path else SUMMARY
    synopsis = _usage(node.parser) if node.path else "assay [OPTIONS] COMMAND ..."
    lines = [
        f'.TH {roff(title)} 1 "{date}" "assay {__version__}" "assay manual"',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{roff(node.page)} \\- {roff(summary)}",
        ".SH SYNOPSIS",
        f".B {roff(synopsis)}",
        ".SH DESCRIPTION",
        roff(node.parser.description or _sentence(node.help)),
    ]
    children = [n for n in nodes if len(n.path) == len(node.path) + 1 and n.path[:-1] == node.path]
    if children:
        lines.append(".SH COMMANDS")
        for child in children:
            lines += [
                ".TP",
                f"\\fB{roff(child.command)}\\fR",
                f"{roff(child.help)}; see \\fB{roff(child.page)}\\fR(1).",
            ]
    acts = [a for a in options(node.parser) if a.help != argparse.SUPPRESS]
    positionals = [a for a in acts if not a.option_strings]
    flags = [a for a in acts if a.option_strings]
    if positionals:
        lines.append(".SH ARGUMENTS")
        for a in positionals:
            lines += [".TP", _action_heading(a), _action_help(a)]
    if flags:
        lines.append(".SH OPTIONS")
        for a in flags:
            lines += [".TP", _action_heading(a), _action_help(a)]
    if not node.path:
        env, _, codes = EPILOG.partition("\n\nexit codes:\n")
        lines += [".SH ENVIRONMENT", ".nf", roff(env.removeprefix("environment:\n")), ".fi"]
        codes, _, _ = codes.partition("\n\n")
        lines += [".SH EXIT STATUS", ".nf", roff(codes), ".fi"]
    else:
        lines += [".SH EXIT STATUS", "As for every command: see \\fBassay\\fR(1)."]
    see = ["assay"] + ([n.page for n in nodes if n.path == node.path[:-1]] if node.path else [])
    see = [s for s in dict.fromkeys(see + [c.page for c in children]) if s != node.page]
    lines += [".SH SEE ALSO", ", ".join(f"\\fB{roff(s)}\\fR(1)" for s in see)]
    return "\n".join(lines) + "\n"


def write_man(directory: Path, parser: argparse.ArgumentParser) -> list[Path]:
    nodes = list(walk(parser))
    directory.mkdir(parents=True, exist_ok=True)
    date = build_date()
    out = []
    for node in nodes:
        path = directory / f"{node.page}.1"
        path.write_text(man_page(node, nodes, date=date))
        out.append(path)
    return out


def program_page(
    parser: argparse.ArgumentParser,
    *,
    section: int,
    summary: str,
    date: str,
    tail: Sequence[tuple[str, str]] = (),
) -> str:
    """One page for a whole program and its subcommands (``assay-system.8``): each
    subcommand a subsection with its usage, help and options. ``tail`` is extra sections,
    (HEADING, roff body), e.g. FILES and SEE ALSO, written as given."""
    nodes = list(walk(parser))
    name = parser.prog
    lines = [
        f'.TH {roff(name.upper())} {section} "{date}" "assay {__version__}" "assay manual"',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{roff(name)} \\- {roff(summary)}",
        ".SH SYNOPSIS",
        f".B {roff(_usage(parser))}",
        ".SH DESCRIPTION",
        roff(parser.description or _sentence(summary)),
    ]
    top = [a for a in options(parser) if a.help != argparse.SUPPRESS]
    if top:
        lines.append(".SH OPTIONS")
        for a in top:
            lines += [".TP", _action_heading(a), _action_help(a)]
    if len(nodes) > 1:
        lines.append(".SH COMMANDS")
    for node in nodes[1:]:
        lines += [
            f".SS {roff(' '.join((name, *node.path)))}",
            f".B {roff(_usage(node.parser))}",
            ".PP",
            roff(node.parser.description or _sentence(node.help)),
        ]
        for a in options(node.parser):
            if a.help != argparse.SUPPRESS:
                lines += [".TP", _action_heading(a), _action_help(a)]
    for heading, body in tail:
        lines += [f".SH {heading}", body]
    return "\n".join(lines) + "\n"


# -- bash completion ----------------------------------------------------------------------


def _bash_assoc(name: str, table: dict[str, str]) -> str:
    body = "\n".join(
        f"  [{shlex.quote(k) if k else '_'}]={shlex.quote(v)}" for k, v in sorted(table.items())
    )
    return f"declare -gA {name}=(\n{body}\n)"


def _value_kind(action: argparse.Action) -> str:
    if action.choices:
        return "choices:" + " ".join(map(str, action.choices))
    metavar = str(action.metavar or "")
    if metavar in DIR_METAVARS:
        return "dir"
    if metavar in FILE_METAVARS or action.type is Path:
        return "file"
    return "none"


def _tables(
    parser: argparse.ArgumentParser,
) -> tuple[dict[str, str], dict[str, str], dict[str, str], dict[str, str]]:
    """What completion needs, per command path: subcommands, options, what each option's
    value is (choices, a file, a directory, anything) and what the positionals are."""
    subs: dict[str, str] = {}
    opts: dict[str, str] = {}
    values: dict[str, str] = {}
    positional: dict[str, str] = {}
    for node in walk(parser):
        key = " ".join(node.path)
        subs[key] = " ".join(node.children)
        flags = [s for a in options(node.parser) for s in a.option_strings]
        opts[key] = " ".join(flags)
        for a in options(node.parser):
            if a.option_strings and takes_value(a):
                for flag in a.option_strings:
                    values[f"{key} {flag}".strip()] = _value_kind(a)
        kinds = [_value_kind(a) for a in options(node.parser) if not a.option_strings]
        positional[key] = "file" if "file" in kinds else ("dir" if "dir" in kinds else "none")
    return subs, opts, values, positional


def completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script: subcommands, options, choices and file names."""
    subs, opts, values, positional = _tables(parser)
    return f"""\
# bash completion for assay {__version__}, generated from its parser by
# `python -m assay.cli.docs --completion DIR`. Do not edit.
{_bash_assoc("_assay_subs", subs)}
{_bash_assoc("_assay_opts", opts)}
{_bash_assoc("_assay_values", values)}
{_bash_assoc("_assay_positional", positional)}

_assay_key() {{ [ -n "$1" ] && printf '%s' "$1" || printf '_'; }}

_assay() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" path="" word i kind sub
    [ "$COMP_CWORD" -gt 0 ] && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        for sub in ${{_assay_subs[$(_assay_key "$path")]}}; do
            if [ "$sub" = "$word" ]; then path="${{path:+$path }}$word"; break; fi
        done
    done
    case "$prev" in
        -*)
            kind="${{_assay_values[${{path:+$path }}$prev]}}"
            case "$kind" in
                choices:*) COMPREPLY=($(compgen -W "${{kind#choices:}}" -- "$cur")); return ;;
                file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
                none) return ;;
            esac ;;
    esac
    case "$cur" in
        -*) COMPREPLY=($(compgen -W "${{_assay_opts[$(_assay_key "$path")]}}" -- "$cur")) ;;
        *)
            sub="${{_assay_subs[$(_assay_key "$path")]}}"
            if [ -n "$sub" ]; then
                COMPREPLY=($(compgen -W "$sub" -- "$cur"))
            else
                case "${{_assay_positional[$(_assay_key "$path")]}}" in
                    file) COMPREPLY=($(compgen -f -- "$cur")) ;;
                    dir) COMPREPLY=($(compgen -d -- "$cur")) ;;
                esac
            fi ;;
    esac
}}
complete -o filenames -F _assay assay
"""


def _zsh_assoc(name: str, table: dict[str, str]) -> str:
    pairs = "\n".join(
        f"  {shlex.quote(k or '_')} {shlex.quote(v)}" for k, v in sorted(table.items())
    )
    return f"{name}=(\n{pairs}\n)"


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    """A zsh completion function (``_assay``, for a directory on ``$fpath``), with the
    same tables and rules as the bash one: no bashcompinit needed."""
    tables = _tables(parser)
    names = ("_assay_subs", "_assay_opts", "_assay_values", "_assay_positional")
    data = "\n".join(_zsh_assoc(n, t) for n, t in zip(names, tables, strict=True))
    return f"""\
#compdef assay
# zsh completion for assay {__version__}, generated from its parser by
# `python -m assay.cli.docs --completion DIR`. Do not edit.
typeset -gA {" ".join(names)}
{data}

_assay() {{
    local cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}} cmdpath="" word kind i
    local -a subs
    for (( i = 2; i < CURRENT; i++ )); do
        word=${{words[i]}}
        [[ $word == -* ]] && continue
        subs=( ${{(s: :)_assay_subs[${{cmdpath:-_}}]}} )
        (( ${{subs[(Ie)$word]}} )) && cmdpath=${{cmdpath:+$cmdpath }}$word
    done
    if [[ $prev == -* ]]; then
        kind=${{_assay_values[${{cmdpath:+$cmdpath }}$prev]}}
        case $kind in
            choices:*) compadd -- ${{(s: :)${{kind#choices:}}}}; return ;;
            file) _files; return ;;
            dir) _files -/; return ;;
            none) return ;;
        esac
    fi
    if [[ $cur == -* ]]; then
        compadd -- ${{(s: :)_assay_opts[${{cmdpath:-_}}]}}
        return
    fi
    subs=( ${{(s: :)_assay_subs[${{cmdpath:-_}}]}} )
    if (( $#subs )); then
        compadd -- $subs
    else
        case ${{_assay_positional[${{cmdpath:-_}}]}} in
            file) _files ;;
            dir) _files -/ ;;
        esac
    fi
}}

_assay "$@"
"""


def write_completion(directory: Path, parser: argparse.ArgumentParser) -> list[Path]:
    """``DIR/assay`` (bash, for /usr/share/bash-completion/completions) and ``DIR/_assay``
    (zsh, for /usr/share/zsh/vendor-completions)."""
    directory.mkdir(parents=True, exist_ok=True)
    bash, zsh = directory / "assay", directory / "_assay"
    bash.write_text(completion(parser))
    zsh.write_text(zsh_completion(parser))
    return [bash, zsh]


# The interface packaging/build-deb.sh relies on.


def manpages(out_dir: Path) -> list[Path]:
    """Write ``assay.1`` and a page per command into ``out_dir``; the pages written."""
    from assay.cli.main import build_parser

    return write_man(out_dir, build_parser())


def completions(out_dir: Path) -> list[Path]:
    """Write the bash and zsh completion into ``out_dir``; the files written."""
    from assay.cli.main import build_parser

    return write_completion(out_dir, build_parser())


def main(argv: Sequence[str] | None = None) -> int:
    from assay.cli.main import build_parser

    p = argparse.ArgumentParser(
        prog="python -m assay.cli.docs", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("--man", type=Path, metavar="DIR", help="write the man pages (section 1) here")
    p.add_argument(
        "--completion", type=Path, metavar="DIR", help="write the bash completion file here"
    )
    args = p.parse_args(argv)
    if args.man is None and args.completion is None:
        p.error("nothing to do: give --man DIR and/or --completion DIR")
    parser = build_parser()
    if args.man is not None:
        for page in write_man(args.man, parser):
            print(page)
    if args.completion is not None:
        for path in write_completion(args.completion, parser):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
