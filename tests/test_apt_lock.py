"""Two corpora builds started at once on a machine that lacks a package: both succeed, and apt
runs once. apt-get and dpkg-query are stand-ins on PATH that behave like the real ones where it
matters: dpkg-query reports the package missing until apt-get has installed it, and apt-get holds
a lock like apt's and fails, as apt does ("Could not get lock ..."), when a second one enters."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from downstream_recipes.corpora import sources

REPO = Path(__file__).resolve().parents[1]
MISSING = "hydrogen-drumkits"  # a package the `test` size needs; its files are really there

DPKG_QUERY = textwrap.dedent('''\
    #!/usr/bin/env bash
    # dpkg-query -W -f=${Status} NAME: every package is installed except $MISSING until apt-get ran
    touch "$STATE/callers/$PPID"
    name="${@: -1}"
    if [ "$name" = "$MISSING" ] && [ ! -e "$STATE/installed/$name" ]; then
        echo "dpkg-query: no packages found matching $name" >&2; exit 1
    fi
    printf 'install ok installed'
''')

APT_GET = textwrap.dedent('''\
    #!/usr/bin/env bash
    # apt's lock: a second apt-get while one runs fails as the real one does
    exec 9>"$STATE/lists.lock"
    if ! flock -n 9; then
        echo "E: Could not get lock $STATE/lists.lock. It is held by process $(cat "$STATE/holder")" >&2; exit 100
    fi
    echo $$ > "$STATE/holder"
    echo "$*" >> "$STATE/calls"
    # Stay inside the lock until $CALLERS processes have asked dpkg-query (at most 20 s), and 3 s
    # more, so that two installers that are not serialised do overlap here.
    for _ in $(seq 200); do [ "$(ls "$STATE/callers" | wc -l)" -ge "${CALLERS:-1}" ] && break; sleep 0.1; done
    [ "${CALLERS:-1}" -gt 1 ] && sleep 3
    if [ "$1" != update ] && [[ " $* " == *" install "* ]]; then
        for arg in "$@"; do case "$arg" in -*|install|update|DPkg::*) ;; *) touch "$STATE/installed/$arg";; esac; done
    fi
''')

# The stand-ins run as any user: the build's root check is lifted, nothing else is changed.
BUILD = textwrap.dedent('''\
    import os, sys
    os.geteuid = lambda: 0
    from downstream_recipes.cli import main
    sys.exit(main(["corpora", "build", "--out", sys.argv[1], "--size", "test", "--stage", "pool"]))
''')


@pytest.fixture()
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if sources.missing_packages(sources.packages_for("test")):
        pytest.skip("the real Debian packages of the `test` size must be installed (the pool stage reads their files)")
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    for d in (state / "callers", state / "installed", bin_dir):
        d.mkdir(parents=True)
    for name, text in (("dpkg-query", DPKG_QUERY), ("apt-get", APT_GET)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STATE", str(state))
    monkeypatch.setenv("MISSING", MISSING)
    monkeypatch.setenv("USAD_APT_LOCK", str(tmp_path / "usad-apt.lock"))
    return state


@pytest.mark.timeout(300)
def test_two_builds_at_once_both_succeed_and_apt_runs_once(stand_ins: Path, tmp_path: Path) -> None:
    assert sources.missing_packages((MISSING, "espeak-ng")) == [MISSING]  # the stand-ins are in charge
    for caller in (stand_ins / "callers").iterdir():
        caller.unlink()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1", CALLERS="2")
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path / f"out{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    calls = (stand_ins / "calls").read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["update", MISSING]  # one update, one install, by one build
    assert (stand_ins / "installed" / MISSING).exists()
    for i in (0, 1):
        assert (tmp_path / f"out{i}" / "pool" / "manifest.tsv").is_file()


def test_a_held_lock_times_out_naming_its_holder(stand_ins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with open(tmp_path / "usad-apt.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        with pytest.raises(ValueError, match=r"waited 1 s for .*usad-apt.lock, held by process 4242 .*corpora build"):
            sources.ensure_packages((MISSING,), lock_timeout=1)
    assert not (stand_ins / "calls").exists()  # apt never ran
    assert sources.ensure_packages((MISSING,), lock_timeout=1) > 0  # free again: installs
    assert sources.missing_packages((MISSING,)) == []
