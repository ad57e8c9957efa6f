#!/usr/bin/env bash
# dev.sh — the two commands of README.md.
#   ./dev.sh run  [args]   set everything up, then run the main job (a local 3-node cluster)
#   ./dev.sh test [args]   set everything up, then lint and run the whole test suite
# Setting up means: a virtual environment in .venv with pnyx and its test tools installed.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
setup() {
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    # Reinstall only when pyproject.toml changed since the last setup.
    stamp="$venv/.pnyx-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -e '.[test]'
        touch "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    run)
        setup
        if [ $# -eq 0 ]; then
            set -- cluster --nodes 3
        fi
        exec "$venv/bin/pnyx" "$@"
        ;;
    test)
        setup
        "$venv/bin/ruff" check .
        exec "$venv/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh run [pnyx args] | ./dev.sh test [pytest args]" >&2
        exit 2
        ;;
esac
