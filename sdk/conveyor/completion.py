"""Shell completion for ``conveyor``, generated from the argparse parser itself.

Walking the parser (its subcommands, options, choices) rather than keeping a hand-written script means the
completion cannot drift from the commands: a new option is completed the moment it exists. Both scripts are
plain shell (``case`` tables and a small driver), with no dependency on argcomplete or bash-completion.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

PROG = "conveyor"


@dataclass
class Level:
    """One command or subcommand (``path`` is e.g. ``""``, ``"submit"``, ``"tokens create"``): what may follow."""

    path: str
    commands: dict[str, str] = field(default_factory=dict)  # subcommand -> help
    options: dict[str, str] = field(default_factory=dict)  # flag -> help
    valued: list[str] = field(default_factory=list)  # flags that take a value
    choices: dict[str, list[str]] = field(default_factory=dict)  # flag, or "" for positionals -> allowed values
    files: list[str] = field(default_factory=list)  # flags, or "" for positionals, naming a local file


def _summary(text: str | None) -> str:
    """An argparse help on one line (what a completion menu has room for)."""
    if not text or text == argparse.SUPPRESS:
        return ""
    return " ".join(text.replace("%%", "%").split()).rstrip(".")


def levels(parser: argparse.ArgumentParser, files: Collection[str] = ()) -> list[Level]:
    """Every level of ``parser``, depth first. ``files``: the ``dest`` of arguments that name a local file."""
    found: list[Level] = []

    def walk(current: argparse.ArgumentParser, path: str) -> None:
        level = Level(path)
        found.append(level)
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: _summary(choice.help) for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    level.commands[name] = helps.get(name, "")
                    walk(sub, f"{path} {name}".strip())
                continue
            if action.help == argparse.SUPPRESS:
                continue
            keys = action.option_strings or [""]
            for key in keys:
                if key:
                    level.options[key] = _summary(action.help)
                    if action.nargs != 0:
                        level.valued.append(key)
                if action.choices is not None and not isinstance(action.choices, dict):
                    level.choices[key] = level.choices.get(key, []) + [str(c) for c in action.choices]
                if action.dest in files:
                    level.files.append(key)

    walk(parser, "")
    return found


def _q(word: str) -> str:
    return shlex.quote(word)


def _case(name: str, arms: Iterable[tuple[str, str]], otherwise: str = "") -> list[str]:
    """A shell function that is one ``case`` over its first argument (valid in bash and zsh alike)."""
    lines = [f"{name}() {{", "    case $1 in"]
    lines += [f"        {_q(key)}) {body} ;;" for key, body in arms]
    lines += ["    esac"] + ([f"    {otherwise}"] if otherwise else []) + ["}"]
    return lines


def _tables(found: list[Level], prefix: str) -> list[str]:
    """The lookup functions both shells share: subcommands, options, valued options, choices, file arguments."""
    out: list[str] = []
    out += _case(f"{prefix}_commands", ((lv.path, f"echo {_q(' '.join(lv.commands))}") for lv in found if lv.commands))
    out += _case(f"{prefix}_options", ((lv.path, f"echo {_q(' '.join(lv.options))}") for lv in found))
    out += _case(f"{prefix}_valued", ((lv.path, f"echo {_q(' '.join(lv.valued))}") for lv in found if lv.valued))
    choices = [
        (f"{lv.path}|{key}", f"echo {_q(' '.join(values))}") for lv in found for key, values in lv.choices.items()
    ]
    out += _case(f"{prefix}_choices", choices)
    files = [(f"{lv.path}|{key}", "return 0") for lv in found for key in lv.files]
    out += _case(f"{prefix}_files", files, otherwise="return 1")
    return out


_BASH_DRIVER = r"""
_conveyor() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmdpath='' word i
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ $word == -- ]]; then  # the job's own command follows: plain file names
            COMPREPLY=($(compgen -f -- "$cur"))
            compopt -o filenames 2>/dev/null
            return 0
        elif [[ $word == -* ]]; then
            if [[ $word != *=* && " $(_conveyor_valued "$cmdpath") " == *" $word "* ]]; then ((i++)); fi
        elif [[ " $(_conveyor_commands "$cmdpath") " == *" $word "* ]]; then
            cmdpath=${cmdpath:+$cmdpath }$word
        fi
    done
    local key="$cmdpath|"
    if [[ $prev == -* && " $(_conveyor_valued "$cmdpath") " == *" $prev "* ]]; then
        key="$cmdpath|$prev"
        COMPREPLY=($(compgen -W "$(_conveyor_choices "$key")" -- "$cur"))
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_conveyor_options "$cmdpath")" -- "$cur"))
        return 0
    else
        COMPREPLY=($(compgen -W "$(_conveyor_commands "$cmdpath") $(_conveyor_choices "$key")" -- "$cur"))
    fi
    if _conveyor_files "$key"; then
        COMPREPLY+=($(compgen -f -- "$cur"))
        compopt -o filenames 2>/dev/null
    fi
    return 0
}
complete -F _conveyor conveyor
"""

_ZSH_DRIVER = r"""
_conveyor() {
    local cmdpath='' word key cur=${words[CURRENT]} prev=${words[CURRENT-1]}
    local -i i
    local -a described values
    for ((i = 2; i < CURRENT; i++)); do
        word=${words[i]}
        if [[ $word == -- ]]; then  # the job's own command follows: plain file names
            _files
            return
        elif [[ $word == -* ]]; then
            if [[ $word != *=* && " $(_conveyor_valued "$cmdpath") " == *" $word "* ]]; then (( i++ )); fi
        elif [[ " $(_conveyor_commands "$cmdpath") " == *" $word "* ]]; then
            cmdpath=${cmdpath:+$cmdpath }$word
        fi
    done
    key="$cmdpath|"
    if [[ $prev == -* && " $(_conveyor_valued "$cmdpath") " == *" $prev "* ]]; then
        key="$cmdpath|$prev"
    elif [[ $cur == -* ]]; then
        described=(${(f)"$(_conveyor_described "$cmdpath|-")"})
        _describe -t options option described
        return
    else
        described=(${(f)"$(_conveyor_described "$cmdpath")"})
        (( $#described )) && _describe -t commands command described
    fi
    values=($(_conveyor_choices "$key"))
    (( $#values )) && compadd -a values
    _conveyor_files "$key" && _files
    return 0
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _conveyor "$@"
else
    compdef _conveyor conveyor
fi
"""


def bash_script(parser: argparse.ArgumentParser, files: Collection[str] = ()) -> str:
    """``eval "$(conveyor completion bash)"``, or save it as ``~/.local/share/bash-completion/completions/conveyor``."""
    head = [f"# bash completion for {PROG}: generated by `{PROG} completion bash` from the CLI's own parser.", ""]
    return "\n".join(head + _tables(levels(parser, files), "_conveyor")) + "\n" + _BASH_DRIVER.lstrip("\n")


def zsh_script(parser: argparse.ArgumentParser, files: Collection[str] = ()) -> str:
    """Save as ``_conveyor`` in a directory of ``$fpath``, or ``eval "$(conveyor completion zsh)"`` after compinit."""
    found = levels(parser, files)
    head = [
        f"#compdef {PROG}",
        f"# zsh completion for {PROG}: generated by `{PROG} completion zsh` from its parser.",
        "",
    ]

    def entries(described: dict[str, str]) -> str:
        return "print -rl -- " + " ".join(_q(f"{name}:{text}" if text else name) for name, text in described.items())

    arms = [(lv.path, entries(lv.commands)) for lv in found if lv.commands]
    arms += [(f"{lv.path}|-", entries(lv.options)) for lv in found if lv.options]
    lines = head + _tables(found, "_conveyor") + _case("_conveyor_described", arms)
    return "\n".join(lines) + "\n" + _ZSH_DRIVER.lstrip("\n")


SCRIPTS = {"bash": bash_script, "zsh": zsh_script}
