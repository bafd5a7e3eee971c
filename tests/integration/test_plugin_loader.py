"""Configs in force on the real database, and resolving plugin code from archives, folders and source."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.plugins.archive import ArchiveError, Limits, read_archive
from plugin_server.plugins.loader import (
    PluginLoadError,
    group_by_team,
    load_configs_in_force,
    resolve_plugin_code,
)
from plugin_server.plugins.models import PluginAttachment, PluginRow
from tests.conftest import Counted

Db = psycopg.Connection[Any]
ASSETS = Path(__file__).parent.parent / "assets"
ORGANIZATION = "ca30f2ec-e9a4-4001-bf27-3ef194086068"
INDEX_JS = "function processEvent (event) { event.properties.processed = true; return event }"
PLUGIN_JSON = json.dumps({"name": "test-maxmind-plugin", "main": "index.js", "config": {}})


# ------------------------------------------------------------------ helpers


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, contents in files.items():
            archive.writestr(zipfile.ZipInfo(name), contents, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def make_tgz(files: dict[str, str | bytes], **options: Any) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", **options) as archive:
        for name, contents in files.items():
            data = contents.encode() if isinstance(contents, str) else contents
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def archived(archive: bytes | None, **fields: Any) -> PluginRow:
    """Like the original's plugin60: a custom plugin with an archive."""
    values: dict[str, Any] = {
        "id": 60,
        "organization_id": ORGANIZATION,
        "name": "test-maxmind-plugin",
        "plugin_type": "custom",
        "url": "https://www.npmjs.com/package/posthog-maxmind-plugin",
        "archive": archive,
    }
    return PluginRow(**{**values, **fields})


def digest(suffix: str = "") -> str:
    return f"plugin test-maxmind-plugin ID 60 (organization ID {ORGANIZATION}{suffix})"


def insert_plugin(db: Db, organization_id: str | None, name: str = "plugin", **columns: Any) -> int:
    values = {"organization_id": organization_id, "name": name, "plugin_type": "custom", **columns}
    row = db.execute(
        f"INSERT INTO posthog_plugin ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))}) RETURNING id",
        list(values.values()),
    ).fetchone()
    assert row
    return int(row[0])


def insert_config(
    db: Db, team_id: int | None, plugin_id: int, *, enabled: bool = True, order: int = 0, config: Any = None
) -> int:
    row = db.execute(
        """INSERT INTO posthog_pluginconfig (team_id, plugin_id, enabled, "order", config)
           VALUES (%s, %s, %s, %s, %s) RETURNING id""",
        (team_id, plugin_id, enabled, order, Jsonb(config or {})),
    ).fetchone()
    assert row
    return int(row[0])


def insert_attachment(db: Db, config_id: int, team_id: int, key: str, contents: bytes) -> None:
    db.execute(
        """INSERT INTO posthog_pluginattachment
               (plugin_config_id, team_id, key, content_type, file_name, file_size, contents)
           VALUES (%s, %s, %s, 'application/octet-stream', %s, %s, %s)""",
        (config_id, team_id, key, f"{key}.bin", len(contents), contents),
    )


async def in_force_ids(pool: AsyncConnectionPool[Any]) -> list[int]:
    return [config.id for config in await load_configs_in_force(pool)]


# ------------------------------------------------------------------ configs in force


async def test_config_in_force_comes_with_its_plugin_and_its_own_attachments(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam
) -> None:
    archive = make_zip({"testplugin/index.js": INDEX_JS, "testplugin/plugin.json": PLUGIN_JSON})
    schema = {"localhostIP": {"type": "string", "default": ""}}
    plugin_id = insert_plugin(
        clean_db,
        team.organization_id,
        "test-maxmind-plugin",
        archive=archive,
        config_schema=Jsonb(schema),
        tag="0.0.2",
    )
    first = insert_config(clean_db, team.team_id, plugin_id, config={"localhostIP": "94.224.212.175"})
    second = insert_config(clean_db, team.team_id, plugin_id, order=1)
    insert_attachment(clean_db, first, team.team_id, "maxmindMmdb", b"test")
    insert_attachment(clean_db, first, team.team_id, "extra", b"more")

    configs = await load_configs_in_force(pool)

    assert [config.id for config in configs] == [first, second]
    config, other = configs
    assert (config.config.team_id, config.config.plugin_id, config.config.enabled) == (
        team.team_id,
        plugin_id,
        True,
    )
    assert config.config.config == {"localhostIP": "94.224.212.175"}
    assert config.config.updated_at is not None and config.config.error is None
    plugin = config.plugin
    assert (plugin.id, plugin.name, plugin.organization_id, plugin.tag) == (
        plugin_id,
        "test-maxmind-plugin",
        team.organization_id,
        "0.0.2",
    )
    assert (plugin.archive, plugin.config_schema, plugin.is_global) == (archive, schema, False)
    assert config.attachments == {
        "maxmindMmdb": PluginAttachment(
            "maxmindMmdb", "application/octet-stream", "maxmindMmdb.bin", b"test"
        ),
        "extra": PluginAttachment("extra", "application/octet-stream", "extra.bin", b"more"),
    }
    assert other.attachments == {}
    assert other.plugin == plugin
    assert resolve_plugin_code(plugin, Path(".")).files["index.js"] == INDEX_JS.encode()


async def test_disabled_configs_are_not_in_force(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam
) -> None:
    plugin_id = insert_plugin(clean_db, team.organization_id)
    enabled = insert_config(clean_db, team.team_id, plugin_id)
    disabled = insert_config(clean_db, team.team_id, plugin_id, enabled=False)
    insert_attachment(clean_db, disabled, team.team_id, "file", b"x")

    assert await in_force_ids(pool) == [enabled]
    clean_db.execute("UPDATE posthog_pluginconfig SET enabled = false WHERE id = %s", (enabled,))
    assert await in_force_ids(pool) == []


async def test_organizations_without_plugin_access_have_no_configs_in_force(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam
) -> None:
    plugin_id = insert_plugin(clean_db, team.organization_id)
    config_id = insert_config(clean_db, team.team_id, plugin_id)
    assert await in_force_ids(pool) == [config_id]

    clean_db.execute("UPDATE posthog_organization SET plugins_access_level = 0")
    assert await in_force_ids(pool) == []


async def test_plugins_of_another_organization_only_run_when_global(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam
) -> None:
    other = create_organization_and_team(clean_db, organization_name="Other")
    foreign = insert_plugin(clean_db, other.organization_id, "foreign")
    shared = insert_plugin(clean_db, other.organization_id, "shared", is_global=True)
    foreign_config = insert_config(clean_db, team.team_id, foreign)
    shared_config = insert_config(clean_db, team.team_id, shared)
    own_config = insert_config(clean_db, other.team_id, foreign)

    configs = await load_configs_in_force(pool)

    assert [config.id for config in configs] == [shared_config, own_config]
    assert foreign_config not in [config.id for config in configs]
    assert configs[0].plugin.is_global


async def test_an_enabled_config_without_a_team_is_left_out_with_a_warning(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, caplog: pytest.LogCaptureFixture
) -> None:
    plugin_id = insert_plugin(clean_db, team.organization_id)
    orphan = insert_config(clean_db, None, plugin_id)
    kept = insert_config(clean_db, team.team_id, plugin_id)

    with caplog.at_level(logging.WARNING, logger="plugin_server.plugins.loader"):
        assert await in_force_ids(pool) == [kept]
    assert f"plugin config {orphan} is enabled but has no team" in caplog.text


async def test_configs_are_grouped_per_team_by_order_then_id(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam
) -> None:
    other = create_organization_and_team(clean_db, organization_name="Other")
    plugins = [
        insert_plugin(clean_db, team.organization_id, f"p{index}", is_global=True) for index in range(4)
    ]
    # the original's "plugin config order" case: orders 2, 1, 3 run as 1, 2, 3
    c39 = insert_config(clean_db, team.team_id, plugins[0], order=2)
    c40 = insert_config(clean_db, team.team_id, plugins[1], order=1)
    c41 = insert_config(clean_db, team.team_id, plugins[2], order=3)
    c42 = insert_config(clean_db, team.team_id, plugins[3], order=1)  # same order as c40: by id
    o1 = insert_config(clean_db, other.team_id, plugins[0], order=5)
    o2 = insert_config(clean_db, other.team_id, plugins[1], order=0)

    by_team = group_by_team(await load_configs_in_force(pool))

    assert {team_id: [config.id for config in configs] for team_id, configs in by_team.items()} == {
        team.team_id: [c40, c42, c39, c41],
        other.team_id: [o2, o1],
    }


async def test_configs_in_force_are_read_in_one_pipelined_transaction(
    counted: Counted, clean_db: Db, team: CreatedTeam
) -> None:
    pool, statements = counted
    plugin_id = insert_plugin(clean_db, team.organization_id)
    insert_config(clean_db, team.team_id, plugin_id)
    statements.clear()

    assert len(await load_configs_in_force(pool)) == 1
    assert statements[0].startswith("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    assert len(statements) == 4  # the snapshot, then configs, plugins and attachments


# ------------------------------------------------------------------ archives


@pytest.mark.parametrize(
    "archive",
    [
        make_zip({"testplugin/index.js": INDEX_JS, "testplugin/plugin.json": PLUGIN_JSON}),
        make_zip({"testplugin/": "", "testplugin/plugin.json": PLUGIN_JSON, "testplugin/index.js": INDEX_JS}),
        make_zip({"index.js": INDEX_JS, "plugin.json": PLUGIN_JSON}),
        make_tgz({"package/plugin.json": PLUGIN_JSON, "package/index.js": INDEX_JS}),
        make_tgz({"plugin.json": PLUGIN_JSON, "index.js": INDEX_JS}),
        # GitHub's tarballs start with a pax global header
        make_tgz(
            {"repo-main/plugin.json": PLUGIN_JSON, "repo-main/index.js": INDEX_JS},
            format=tarfile.PAX_FORMAT,
            pax_headers={"comment": "0123abcd"},
        ),
    ],
    ids=["zip-root", "zip-root-folder-entry", "zip-flat", "tgz-package", "tgz-flat", "tgz-github"],
)
def test_archives_are_read_as_zip_or_tgz_with_or_without_a_root_folder(archive: bytes) -> None:
    code = resolve_plugin_code(archived(archive), Path("."))

    assert (code.language, code.main) == ("js", "index.js")
    assert code.files == {"index.js": INDEX_JS.encode(), "plugin.json": PLUGIN_JSON.encode()}
    assert code.plugin_json == {"name": "test-maxmind-plugin", "main": "index.js", "config": {}}


def test_a_root_folder_is_only_stripped_when_it_holds_everything() -> None:
    files = read_archive(make_zip({"index.js": INDEX_JS, "lib/util.js": "x", "__MACOSX/._index.js": "junk"}))
    assert files == {"index.js": INDEX_JS.encode(), "lib/util.js": b"x"}
    nested = read_archive(make_tgz({"p/index.js": INDEX_JS, "p/lib/util.js": "x"}))
    assert nested == {"index.js": INDEX_JS.encode(), "lib/util.js": b"x"}


def test_a_broken_archive_does_not_load() -> None:
    with pytest.raises(PluginLoadError, match=r"^Could not read archive as \.zip or \.tgz$"):
        resolve_plugin_code(archived(b"this is not a zip"), Path("."))


@pytest.mark.parametrize("plugin_json", ['{ broken: "plugin.json" -=- ', '["not", "an", "object"]'])
def test_a_broken_plugin_json_in_an_archive_does_not_load(plugin_json: str) -> None:
    archive = make_zip({"testplugin/index.js": INDEX_JS, "testplugin/plugin.json": plugin_json})
    with pytest.raises(PluginLoadError) as caught:
        resolve_plugin_code(archived(archive), Path("."))
    assert str(caught.value) == f"Can not load plugin.json for {digest()}"


def test_an_archive_without_a_main_file_does_not_load() -> None:
    archive = make_zip({"testplugin/plugin.json": json.dumps({"name": "x"}), "testplugin/README.md": "hi"})
    with pytest.raises(PluginLoadError) as caught:
        resolve_plugin_code(archived(archive), Path("."))
    assert str(caught.value) == f"Could not load index.js for {digest()}!"


def test_a_declared_main_that_is_missing_does_not_load() -> None:
    archive = make_zip({"plugin.json": json.dumps({"main": "dist/index.js"}), "index.js": INDEX_JS})
    with pytest.raises(PluginLoadError) as caught:
        resolve_plugin_code(archived(archive), Path("."))
    assert str(caught.value) == f"Could not load dist/index.js for {digest()}!"


@pytest.mark.parametrize(
    ("files", "main", "language"),
    [
        (
            {"plugin.json": '{"main": "src/index.ts"}', "src/index.ts": "", "index.js": ""},
            "src/index.ts",
            "js",
        ),
        ({"plugin.json": '{"main": "./lib/main.py"}', "lib/main.py": ""}, "lib/main.py", "python"),
        ({"plugin.json": '{"main": "index.mjs"}', "index.mjs": ""}, "index.mjs", "js"),
        ({"plugin.json": '{"main": "index.cjs"}', "index.cjs": ""}, "index.cjs", "js"),
        ({"index.js": "", "index.ts": "", "index.py": ""}, "index.js", "js"),
        ({"index.ts": "", "index.py": ""}, "index.ts", "js"),
        ({"plugin.json": "{}", "index.py": ""}, "index.py", "python"),
        ({"plugin.json": '{"main": ""}', "index.py": ""}, "index.py", "python"),
    ],
)
def test_main_file_and_language(files: dict[str, str | bytes], main: str, language: str) -> None:
    code = resolve_plugin_code(archived(make_zip(files)), Path("."))
    assert (code.main, code.language) == (main, language)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ("index.rb", 'Main file "index.rb" of plugin test-maxmind-plugin ID 60 '),
        ("../index.js", "Could not load ../index.js for"),
        ("/index.js", "Could not load /index.js for"),
        (5, '"main" in plugin.json of plugin test-maxmind-plugin ID 60'),
    ],
)
def test_unsupported_or_escaping_main_files_do_not_load(declared: object, message: str) -> None:
    archive = make_zip({"plugin.json": json.dumps({"main": declared}), "index.rb": "", "index.js": ""})
    with pytest.raises(PluginLoadError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        resolve_plugin_code(archived(archive), Path("."))


# ------------------------------------------------------------------ guards


@pytest.mark.parametrize(
    "name", ["../evil.js", "/etc/evil.js", "plugin/../../evil.js", "C:/evil.js", "..\\evil.js"]
)
def test_archive_entries_may_not_leave_the_plugin(name: str) -> None:
    for archive in (make_zip({"index.js": INDEX_JS, name: "x"}), make_tgz({"index.js": INDEX_JS, name: "x"})):
        with pytest.raises(PluginLoadError, match="unsafe path in archive"):
            resolve_plugin_code(archived(archive), Path("."))


def test_tar_links_and_devices_are_not_taken() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = INDEX_JS.encode()
        info = tarfile.TarInfo("p/index.js")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("p/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        fifo = tarfile.TarInfo("p/fifo")
        fifo.type = tarfile.FIFOTYPE
        archive.addfile(fifo)
    assert read_archive(buffer.getvalue()) == {"index.js": data}


def test_a_zip_bomb_is_refused_before_it_is_unpacked() -> None:
    bomb = make_zip({"index.js": INDEX_JS, "zeros.bin": bytes(101 * 1024 * 1024)})
    assert len(bomb) < 1024 * 1024
    with pytest.raises(PluginLoadError, match="archive unpacks to more than 104857600 bytes"):
        resolve_plugin_code(archived(bomb), Path("."))


def test_a_zip_whose_headers_understate_the_sizes_is_refused() -> None:
    archive = bytearray(make_zip({"index.js": INDEX_JS, "zeros.bin": bytes(5000)}))
    # Shrink the declared size of zeros.bin in its central directory entry (offset 24 from the signature).
    entry = archive.rindex(b"PK\x01\x02")
    archive[entry + 24 : entry + 28] = (10).to_bytes(4, "little")
    with pytest.raises(ArchiveError, match=r"^Could not read archive as \.zip or \.tgz$"):
        read_archive(bytes(archive), Limits(max_total_bytes=1000))


def test_a_tgz_bomb_is_refused_before_it_is_unpacked() -> None:
    with pytest.raises(ArchiveError, match="archive unpacks to more than 1000 bytes"):
        read_archive(make_tgz({"index.js": INDEX_JS, "zeros.bin": bytes(5000)}), Limits(max_total_bytes=1000))


@pytest.mark.parametrize("make", [make_zip, make_tgz])
def test_archives_with_too_many_entries_are_refused(make: Any) -> None:
    archive = make({f"file{index}.js": "" for index in range(11)})
    with pytest.raises(ArchiveError, match="archive has more than 10 entries"):
        read_archive(archive, Limits(max_files=10))
    assert len(read_archive(archive, Limits(max_files=11))) == 11


# ------------------------------------------------------------------ source, remote, local folders


def test_a_source_plugin_is_javascript_text() -> None:
    plugin = archived(None, plugin_type="source", url=None, source=INDEX_JS)
    code = resolve_plugin_code(plugin, Path("."))
    assert (code.language, code.main, code.files, code.plugin_json) == (
        "js",
        "index.js",
        {"index.js": INDEX_JS.encode()},
        {},
    )


def test_a_remote_plugin_without_an_archive_does_not_load() -> None:
    plugin = archived(None, is_global=True)
    with pytest.raises(PluginLoadError) as caught:
        resolve_plugin_code(plugin, Path("."))
    assert str(caught.value) == (
        f"Tried using undownloaded remote {digest(' - global')}, which is not supported!"
    )


def write_folder(folder: Path, files: dict[str, str]) -> Path:
    for name, contents in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(contents)
    return folder


def test_local_plugins_are_folders_relative_to_base_dir(tmp_path: Path) -> None:
    base = tmp_path / "base"
    write_folder(
        base / "plugins" / "hello", {"plugin.json": PLUGIN_JSON, "index.js": INDEX_JS, "lib/util.js": "u"}
    )
    write_folder(tmp_path / "sibling", {"index.py": "def process_event(event, meta): return event"})

    relative = resolve_plugin_code(archived(None, url="file:plugins/hello"), base)
    assert (relative.main, relative.language) == ("index.js", "js")
    assert relative.files == {
        "plugin.json": PLUGIN_JSON.encode(),
        "index.js": INDEX_JS.encode(),
        "lib/util.js": b"u",
    }
    # like the original, the path may leave BASE_DIR (`file:../plugin` while developing) or be absolute
    sibling = resolve_plugin_code(archived(None, url="file:../sibling"), base)
    assert (sibling.main, sibling.language) == ("index.py", "python")
    absolute = resolve_plugin_code(archived(None, url=f"file:{tmp_path / 'sibling'}"), Path("/nowhere"))
    assert absolute.files == sibling.files


def test_a_file_url_takes_precedence_over_an_archive(tmp_path: Path) -> None:
    write_folder(tmp_path, {"index.py": ""})
    code = resolve_plugin_code(archived(make_zip({"index.js": INDEX_JS}), url=f"file:{tmp_path}"), Path("."))
    assert code.main == "index.py"


def test_local_folders_leave_out_dependencies_caches_and_hidden_files(tmp_path: Path) -> None:
    write_folder(
        tmp_path,
        {
            "index.js": INDEX_JS,
            "node_modules/left-pad/index.js": "x",
            "__pycache__/index.cpython-311.pyc": "x",
            ".git/HEAD": "x",
            ".env": "SECRET=1",
            "src/.hidden": "x",
            "src/util.js": "u",
        },
    )
    code = resolve_plugin_code(archived(None, url=f"file:{tmp_path}"), Path("."))
    assert sorted(code.files) == ["index.js", "src/util.js"]


def test_the_fixture_plugins_load_from_their_folders() -> None:
    python = resolve_plugin_code(archived(None, url="file:plugins/hello-python"), ASSETS)
    assert (python.main, python.language, python.plugin_json["name"]) == (
        "index.py",
        "python",
        "hello-python",
    )
    javascript = resolve_plugin_code(archived(None, url="file:plugins/hello-js"), ASSETS)
    assert (javascript.main, javascript.language, javascript.plugin_json["name"]) == (
        "index.js",
        "js",
        "hello-js",
    )


def test_local_plugin_errors(tmp_path: Path) -> None:
    with pytest.raises(
        PluginLoadError, match=f'^Could not find local plugin folder "{tmp_path / "missing"}" for plugin '
    ):
        resolve_plugin_code(archived(None, url="file:missing"), tmp_path)

    write_folder(tmp_path / "broken", {"plugin.json": '{ broken: "plugin.json" -=- ', "index.js": INDEX_JS})
    with pytest.raises(PluginLoadError) as caught:
        resolve_plugin_code(archived(None, url="file:broken"), tmp_path)
    assert (
        str(caught.value)
        == f'Could not load posthog config at "{tmp_path / "broken" / "plugin.json"}" for {digest()}'
    )

    write_folder(tmp_path / "empty", {"plugin.json": "{}", "README.md": "hi"})
    with pytest.raises(PluginLoadError) as caught:
        resolve_plugin_code(archived(None, url="file:empty"), tmp_path)
    assert str(caught.value) == f'No "main" config key or "index.js" file found for {digest()}'
