"""A SQLite database holds every conversation and the keys' hashes: the file chatdock makes, and the folders it
makes for it, are its owner's alone, whatever the umask lets others read; a file or folder that was there keeps
its permissions."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from chatdock.server.cli.main import main
from tests.transports import chatdock_command

pytestmark = pytest.mark.process  # runs the chatdock command


def chatdock(*args: str) -> subprocess.CompletedProcess[str]:
    """The command, under the umask most systems give (others may read what is made)."""
    return subprocess.run(
        [*chatdock_command(), *args], capture_output=True, text=True, timeout=60, check=False, umask=0o022
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_new_folders_are_the_owners_alone(tmp_path: Path) -> None:
    db = tmp_path / "data" / "chatdock" / "chatdock.db"
    created = chatdock("keys", "create", "--db", str(db), "--org", "acme")
    assert created.returncode == 0, created.stderr
    assert [oct(mode(path)) for path in (db.parent.parent, db.parent, db)] == ["0o700", "0o700", "0o600"]

    imported = tmp_path / "imported.db"  # import makes its file once the lines passed their check
    source = tmp_path / "history.jsonl"
    source.write_text(
        '{"contact_id": "c", "channel": "sms", "role": "user", "content": "hi", "created_at": "2025-01-01T00:00:00Z"}\n'
    )
    done = chatdock("import", "-q", "--db", str(imported), str(source))
    assert done.returncode == 0, done.stderr
    assert oct(mode(imported)) == "0o600"


def test_the_default_database_is_under_the_data_folder_a_relative_xdg_data_home_ignored(tmp_path: Path) -> None:
    """Without --db, the database is $XDG_DATA_HOME/chatdock/chatdock.db, or ~/.local/share/chatdock/chatdock.db;
    a relative XDG_DATA_HOME made it under whatever folder the desktop client started chatdock in (a review):
    the XDG spec says to ignore it."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    base = {name: value for name, value in os.environ.items() if not name.startswith(("CHATDOCK_", "XDG_"))}
    for xdg, expected in (("relxdg", home / ".local" / "share"), (str(tmp_path / "xdg"), tmp_path / "xdg")):
        environment = {**base, "HOME": str(home), "XDG_DATA_HOME": xdg}
        made = subprocess.run(
            [*chatdock_command(), "keys", "create", "--org", "acme"],
            capture_output=True, text=True, timeout=60, check=False, env=environment, cwd=work,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert (expected / "chatdock" / "chatdock.db").is_file(), (xdg, sorted(tmp_path.rglob("*.db")))
    assert not (work / "relxdg").exists()


def test_without_a_home_folder_a_command_needs_only_its_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A container's user with no HOME and no passwd entry (no home folder to be found): every command, --db given
    or not, failed with a traceback while it worked out the default database (an SRE's review). With --db it
    runs; without, one line says what to give."""

    def nowhere() -> Path:
        raise RuntimeError("Could not determine home directory.")

    for name in ("HOME", "XDG_DATA_HOME", "CHATDOCK_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", nowhere)
    assert main(["keys", "create", "--org", "acme", "--db", str(tmp_path / "given.db")]) == 0
    assert main(["keys", "list"]) == 2
    assert capsys.readouterr().err.endswith(
        "no database named, and no home folder to keep the default one in (HOME is not set); give --db or CHATDOCK_DB\n"
    )


def test_an_existing_database_and_folder_keep_their_permissions(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    db = folder / "chatdock.db"
    assert chatdock("keys", "create", "--db", str(db), "--org", "acme").returncode == 0
    db.chmod(0o640)  # the operator's choice
    again = chatdock("keys", "create", "--db", str(db), "--org", "acme", "--name", "second")
    assert again.returncode == 0, again.stderr
    assert (oct(mode(folder)), oct(mode(db))) == ("0o755", "0o640")


def test_a_link_to_a_new_database_makes_its_target_the_owners_alone(tmp_path: Path) -> None:
    target = tmp_path / "data" / "chatdock.db"
    link = tmp_path / "chatdock.db"
    link.symlink_to(target)  # to nothing yet
    assert chatdock("keys", "create", "--db", str(link), "--org", "acme").returncode == 0
    assert [oct(mode(path)) for path in (target.parent, target)] == ["0o700", "0o600"]


def test_a_sqlite_uri_is_refused_with_the_path_to_give(tmp_path: Path) -> None:
    """chatdock opens its file with URIs of its own: a `file:` URI given was a file name to some connections and
    a URI to others (two databases), and left a folder named `file:` behind."""
    uri = f"file:{tmp_path / 'chatdock.db'}"
    refused = chatdock("keys", "create", "--db", uri, "--org", "acme")
    assert refused.returncode == 2 and "not a SQLite URI" in refused.stderr, refused.stderr
    assert "file:/data/chatdock.db is /data/chatdock.db" in refused.stderr
    assert list(tmp_path.iterdir()) == [] and not Path("file:").exists()
