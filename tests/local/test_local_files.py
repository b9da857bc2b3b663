"""The embedded platform's files hold its data: no other local user may read them (issue 18 §4).

Folders are 0711 (PostgreSQL's own system user must pass through to its data folder when
opsctl runs as root), every file opsctl or a server writes is 0600: state, logs, PID files,
Redis's RDB.
"""

from __future__ import annotations

import stat

import pytest

pytestmark = pytest.mark.integration


def test_nothing_of_the_platform_is_readable_by_others(local_platform):
    import redis

    from opsctl.local import state as st

    local_platform.up()
    folder = st.folder_for(local_platform.root)
    redis.Redis.from_url(local_platform.endpoints().redis_url).save()  # the RDB exists now
    for path in (folder.parent, folder):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o066 == 0, f"{path} is {oct(mode)}"
    checked = []
    for path in [folder / "state.json", *folder.glob("*.log"), *folder.glob("logs/*"),
                 *folder.glob("run/*.pid"), *folder.glob("data/redis/*")]:
        if path.is_file():
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
            checked.append(path.name)
    assert "state.json" in checked and "dump.rdb" in checked, checked
    assert any(name.endswith(".log") for name in checked), checked
