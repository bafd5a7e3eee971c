"""meta.cache on a real Valkey: the original's vm.test.ts cases, key layout, types, and the fixed get default."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from plugin_server.plugins.meta.cache import PluginCache
from plugin_server.plugins.meta.errors import IllegalOperationError

PLUGIN_ID, TEAM_ID = 60, 2


@pytest.fixture
def cache(aredis: aioredis.Redis) -> PluginCache:
    return PluginCache(aredis, plugin_id=PLUGIN_ID, team_id=TEAM_ID)


async def test_keys_are_per_plugin_and_team(
    cache: PluginCache, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    await cache.set("counter", {"a": 1})
    assert redis_client.get(f"@plugin/{PLUGIN_ID}/{TEAM_ID}/counter") == b'{"a":1}'
    other_team = PluginCache(aredis, plugin_id=PLUGIN_ID, team_id=3)
    other_plugin = PluginCache(aredis, plugin_id=61, team_id=TEAM_ID)
    assert await other_team.get("counter") is None
    assert await other_plugin.get("counter") is None
    same = PluginCache(
        aredis, plugin_id=PLUGIN_ID, team_id=TEAM_ID
    )  # another config of the same plugin and team
    assert await same.get("counter") == {"a": 1}


async def test_set_get_counter(cache: PluginCache) -> None:
    """The original's 'meta.cache set/get': a counter kept across calls."""
    await cache.set("counter", 0)
    for expected in (1, 2, 3):
        counter = await cache.get("counter", 999)
        await cache.set("counter", counter + 1)
        assert counter + 1 == expected


@pytest.mark.parametrize("value", ["text", 12, 1.5, True, None, [1, "a", None], {"nested": {"list": [1, 2]}}])
async def test_json_values_round_trip(cache: PluginCache, value: object) -> None:
    await cache.set("key", value)
    assert await cache.get("key", "default") == value


async def test_a_missing_key_gives_the_default(cache: PluginCache) -> None:
    """Bug 9 of the original, fixed: it returned null instead of the default."""
    assert await cache.get("missing") is None
    assert await cache.get("missing", 999) == 999
    assert await cache.get("missing", False, json_serialize=False) is False


async def test_invalid_json_gives_the_default(cache: PluginCache, redis_client: redis.Redis) -> None:
    redis_client.set(f"@plugin/{PLUGIN_ID}/{TEAM_ID}/broken", b"{not json")
    assert await cache.get("broken", "fallback") == "fallback"
    assert await cache.get("broken", json_serialize=False) == "{not json"


async def test_values_without_json(cache: PluginCache, redis_client: redis.Redis) -> None:
    await cache.set("raw", "13.106.122.3|2021-01-01", json_serialize=False)
    assert redis_client.get(f"@plugin/{PLUGIN_ID}/{TEAM_ID}/raw") == b"13.106.122.3|2021-01-01"
    assert await cache.get("raw", json_serialize=False) == "13.106.122.3|2021-01-01"
    await cache.set("number", 5, json_serialize=False)
    assert await cache.get("number", json_serialize=False) == "5"
    with pytest.raises(TypeError):
        await cache.set("object", {"a": 1}, json_serialize=False)


async def test_set_with_a_ttl(cache: PluginCache, aredis: aioredis.Redis) -> None:
    """The original's 'meta.cache set ttl', with a sub-second ttl to keep the test fast."""
    await cache.set("counter", 1, 0.2)
    assert await cache.get("counter", 0) == 1
    await asyncio.sleep(0.3)
    assert await cache.get("counter", 0) == 0

    await cache.set("whole", 1, 100)
    assert 99 <= await aredis.ttl(f"@plugin/{PLUGIN_ID}/{TEAM_ID}/whole") <= 100
    await cache.set("forever", 1, 0)
    assert await aredis.ttl(f"@plugin/{PLUGIN_ID}/{TEAM_ID}/forever") == -1
    with pytest.raises(TypeError):
        await cache.set("counter", 1, "10")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await cache.set("counter", 1, -5)


async def test_expire(cache: PluginCache, aredis: aioredis.Redis) -> None:
    """The original's 'meta.cache expire'."""
    await cache.set("counter", 5)
    assert await cache.expire("counter", 0.2) is True
    assert await cache.get("counter", 0) == 5
    await asyncio.sleep(0.3)
    assert await cache.get("counter", 0) == 0
    assert await cache.expire("counter", 10) is False  # no such key

    await cache.set("gone", 1)
    assert await cache.expire("gone", 0) is True  # expiring now deletes
    assert await cache.get("gone") is None
    with pytest.raises(TypeError):
        await cache.expire("gone", None)  # type: ignore[arg-type]


async def test_incr(cache: PluginCache) -> None:
    """The original's 'meta.cache incr': starts from the stored value, or from 0."""
    await cache.set("counter", 0)
    assert [await cache.incr("counter") for _ in range(3)] == [1, 2, 3]
    assert await cache.incr("new") == 1
    assert await cache.incr("new", 10) == 11
    assert await cache.get("new") == 11
    await cache.set("text", "abc")
    with pytest.raises(ValueError, match=r"cache\.incr"):
        await cache.incr("text")
    with pytest.raises(TypeError):
        await cache.incr("new", 1.5)  # type: ignore[arg-type]


async def test_lpush_lrange_llen(cache: PluginCache) -> None:
    """The original's 'meta.cache lpush/lrange/llen'."""
    assert await cache.lpush("mylist", "a string") == 1
    assert await cache.lpush("mylist", ["an", "array"]) == 3
    assert sorted(await cache.lrange("mylist", 0, 3)) == ["a string", "an", "array"]
    assert await cache.lrange("mylist", 0, 3) == ["array", "an", "a string"]
    assert await cache.llen("mylist") == 3
    await cache.expire("mylist", 0)
    assert await cache.lrange("mylist", 0, 3) == []
    assert await cache.llen("mylist") == 0


async def test_lrem_lpop(cache: PluginCache) -> None:
    """The original's 'meta.cache lrem/lpop/lpush/lrange'."""
    await cache.lpush("mylist2", ["1", "2", "3"])
    assert await cache.lrange("mylist2", 0, 3) == ["3", "2", "1"]
    assert await cache.lpop("mylist2", 1) == ["3"]
    assert await cache.lrange("mylist2", 0, 3) == ["2", "1"]
    assert await cache.lrem("mylist2", 1, "2") == 1
    assert await cache.lrange("mylist2", 0, 3) == ["1"]
    assert await cache.lpop("mylist2") == ["1"]
    assert await cache.lpop("mylist2", 5) == []


async def test_list_elements_are_strings(cache: PluginCache) -> None:
    await cache.lpush("numbers", [1, 2.5, 3.0, True])
    assert await cache.lrange("numbers", 0, -1) == ["true", "3", "2.5", "1"]
    assert await cache.lrem("numbers", 0, 3) == 1


async def test_lpush_limits_and_types(cache: PluginCache) -> None:
    await cache.lpush("big", [str(i) for i in range(1000)])
    with pytest.raises(IllegalOperationError, match="Maximum: 1000"):
        await cache.lpush("big", [str(i) for i in range(1001)])
    with pytest.raises(TypeError, match="string value or an array of strings"):
        await cache.lpush("big", {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="string value or an array of strings"):
        await cache.lpush("big", [{"a": 1}])
    with pytest.raises(ValueError):
        await cache.lpush("big", [])
    assert await cache.llen("big") == 1000


async def test_list_arguments_are_checked(cache: PluginCache) -> None:
    with pytest.raises(TypeError, match="start and end indexes"):
        await cache.lrange("list", "0", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='"count"'):
        await cache.lrem("list", "1", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='"count"'):
        await cache.lpop("list", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await cache.lpop("list", 0)
    assert await cache.lrange("list", 0.0, 3.0) == []  # type: ignore[arg-type]  # JavaScript numbers may arrive as floats


async def test_operations_on_the_wrong_kind_of_value(cache: PluginCache) -> None:
    await cache.set("scalar", 1)
    with pytest.raises(ValueError, match=r"cache\.lpush"):
        await cache.lpush("scalar", "x")
    await cache.lpush("list", "x")
    with pytest.raises(ValueError, match=r"cache\.get"):
        await cache.get("list")


async def test_keys_may_be_numbers_but_not_objects(cache: PluginCache, redis_client: redis.Redis) -> None:
    await cache.set(12345, "distinct id as a number")  # type: ignore[arg-type]
    assert redis_client.exists(f"@plugin/{PLUGIN_ID}/{TEAM_ID}/12345")
    assert await cache.get("12345") == "distinct id as a number"
    with pytest.raises(TypeError, match=r"cache\.get expects a string key"):
        await cache.get({"a": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await cache.set("unserialisable", {1, 2})
