"""require('faker') in plugins (faker.js): the subset of faker 5 it provides, seeded repeatably."""

from __future__ import annotations

import re
import uuid

from tests.js_support import body_outcome

SAMPLE = """
    faker.seed(42)
    const sample = () => ({
        name: faker.name.findName(), email: faker.internet.email(), uuid: faker.datatype.uuid(),
        n: faker.datatype.number({ min: 10, max: 20 }), price: faker.commerce.price(), ip: faker.internet.ip(),
        city: faker.address.city(), country: faker.address.countryCode(), words: faker.lorem.words(4),
        sentence: faker.lorem.sentence(), company: faker.company.companyName(), product: faker.commerce.productName(),
        past: faker.date.past().getTime() <= Date.now(), pick: faker.random.arrayElement(['a', 'b']),
        phone: faker.phone.phoneNumber(), float: faker.datatype.float({ min: 0, max: 1, precision: 0.01 }),
        shuffled: faker.helpers.shuffle([1, 2, 3]).sort(), symbols: faker.helpers.replaceSymbols('##-??'),
    })
"""


async def test_a_seeded_faker_repeats_itself_and_gives_plausible_values() -> None:
    out = await body_outcome(
        SAMPLE
        + "const first = sample(); faker.seed(42); out = { first, again: sample(), other: (faker.seed(7), sample()) }",
        head="const faker = require('faker')",
    )
    first = out["first"]
    assert out["again"] == first and out["other"] != first
    assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", first["name"])
    assert re.fullmatch(r"[a-z._0-9]+@[a-z.]+", first["email"])
    assert uuid.UUID(first["uuid"]).version == 4
    assert 10 <= first["n"] <= 20 and 0 <= first["float"] <= 1
    assert re.fullmatch(r"\d+\.\d\d", first["price"])
    assert all(0 <= int(part) <= 255 for part in first["ip"].split("."))
    assert len(first["words"].split()) == 4 and first["sentence"].endswith(".")
    assert first["past"] is True and first["pick"] in ("a", "b") and first["shuffled"] == [1, 2, 3]
    assert re.fullmatch(r"\d\d-[a-z]{2}", first["symbols"])
