// `require('faker')` for plugins, written for this server: a subset of faker 5's API with small
// English word lists, for plugins that make up sample events (what the original's faker gave them,
// with other words). Values come from a seedable generator (faker.seed(n)), Math.random by default.
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (faker.js)(kit, modules)  ->  {faker: the module}
//
// Namespaces: datatype (number, float, boolean, uuid, string, json), random (number, float,
// boolean, uuid, arrayElement, arrayElements, objectElement, word, words, alpha, alphaNumeric),
// name, internet, lorem, company, address, commerce, finance, phone, date, helpers (randomize,
// shuffle, slugify, replaceSymbols), image.imageUrl, system.fileName.
(function () {
    "use strict";

    let state = 0;
    let seeded = false;

    // mulberry32: small, fast, good enough for sample data (not for secrets).
    function next() {
        if (!seeded) return Math.random();
        state = (state + 0x6d2b79f5) | 0;
        let t = Math.imul(state ^ (state >>> 15), 1 | state);
        t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    }

    function number(options) {
        const given = typeof options === "number" ? { max: options } : options || {};
        const min = given.min === undefined ? 0 : given.min;
        const max = given.max === undefined ? 99999 : given.max;
        const precision = given.precision === undefined ? 1 : given.precision;
        const steps = Math.floor((max - min) / precision);
        const value = min + Math.floor(next() * (steps + 1)) * precision;
        return precision < 1 ? parseFloat(value.toFixed(String(precision).split(".")[1].length)) : value;
    }

    const pick = (list) => list[Math.floor(next() * list.length)];
    const pad = (value, width) => String(value).padStart(width, "0");
    const words = (count, list) => Array.from({ length: count }, () => pick(list));
    const capitalize = (text) => text.charAt(0).toUpperCase() + text.slice(1);

    const FIRST = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "Ada", "Grace",
        "Alan", "Katherine", "Oliver", "Emma", "Noah", "Sophia", "Liam", "Mia", "Lucas", "Amelia"];
    const LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Lovelace", "Hopper",
        "Turing", "Johnson", "Martin", "Lee", "Walker", "Hall", "Young", "King", "Wright", "Scott"];
    const LOREM = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
        "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim", "minim", "veniam"];
    const DOMAINS = ["com", "net", "org", "io", "info", "biz"];
    const FREE_MAIL = ["gmail.com", "yahoo.com", "hotmail.com", "example.com"];
    const CITIES = ["Springfield", "Riverside", "Franklin", "Greenville", "Bristol", "Clinton", "Fairview", "Salem", "Madison", "Georgetown"];
    const COUNTRIES = [["United States", "US"], ["United Kingdom", "GB"], ["Germany", "DE"], ["France", "FR"], ["Estonia", "EE"],
        ["Brazil", "BR"], ["India", "IN"], ["Japan", "JP"], ["Canada", "CA"], ["Australia", "AU"]];
    const STREETS = ["Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Lake", "Hill", "Park", "Sunset"];
    const STREET_SUFFIXES = ["Street", "Avenue", "Road", "Lane", "Drive", "Court"];
    const COMPANY_SUFFIXES = ["Inc", "LLC", "Group", "and Sons", "Ltd"];
    const JOBS = ["Engineer", "Designer", "Manager", "Analyst", "Consultant", "Developer", "Architect", "Officer"];
    const ADJECTIVES = ["Small", "Ergonomic", "Rustic", "Intelligent", "Gorgeous", "Incredible", "Fantastic", "Practical", "Sleek", "Awesome"];
    const MATERIALS = ["Steel", "Wooden", "Concrete", "Plastic", "Cotton", "Granite", "Rubber", "Metal", "Soft", "Fresh"];
    const PRODUCTS = ["Chair", "Car", "Computer", "Keyboard", "Mouse", "Bike", "Ball", "Gloves", "Pants", "Shirt", "Table", "Shoes"];
    const DEPARTMENTS = ["Books", "Movies", "Music", "Games", "Electronics", "Computers", "Home", "Garden", "Tools", "Grocery"];
    const CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "SEK"];
    const AGENTS = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/90.0.4430.93 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/14.1 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:88.0) Gecko/20100101 Firefox/88.0",
    ];
    const ALPHA = "abcdefghijklmnopqrstuvwxyz";

    const uuid = () => "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, (c) => {
        const r = Math.floor(next() * 16);
        return (c === "x" ? r : (r & 0x3) | 0x8).toString(16);
    });
    const alpha = (count = 1) => Array.from({ length: typeof count === "number" ? count : count.count || 1 }, () => pick(ALPHA)).join("");
    const alphaNumeric = (count = 1) => Array.from({ length: count }, () => pick(ALPHA + "0123456789")).join("");
    const firstName = () => pick(FIRST);
    const lastName = () => pick(LAST);
    const userName = (first = firstName(), last = lastName()) => `${first}${pick([".", "_", ""])}${last}${number(99)}`.toLowerCase();
    const domainWord = () => pick(LAST).toLowerCase();
    const domainName = () => `${domainWord()}.${pick(DOMAINS)}`;
    const sentence = (count) => capitalize(words(count || 3 + Math.floor(next() * 8), LOREM).join(" ")) + ".";
    const between = (from, to) => new Date(new Date(from).getTime() + next() * (new Date(to).getTime() - new Date(from).getTime()));
    const dayMs = 86400000;
    const reference = (ref) => (ref === undefined ? Date.now() : new Date(ref).getTime());

    const faker = {
        seed(value) {
            state = Number(value) | 0;
            seeded = true;
        },
        datatype: {
            number, uuid,
            float: (options) => number({ precision: 0.01, ...(typeof options === "number" ? { max: options } : options) }),
            boolean: () => next() < 0.5,
            string: (length = 10) => Array.from({ length }, () => String.fromCharCode(33 + Math.floor(next() * 94))).join(""),
            json: () => JSON.stringify({ foo: alphaNumeric(8), bar: number(), baz: alpha(5) }),
            datetime: () => between(0, Date.now()),
        },
        random: {
            number, uuid, alpha, alphaNumeric,
            float: (options) => faker.datatype.float(options),
            boolean: () => next() < 0.5,
            arrayElement: (list = ["a", "b", "c"]) => pick(list),
            arrayElements: (list = ["a", "b", "c"], count) => faker.helpers.shuffle(list).slice(0, count === undefined ? 1 + Math.floor(next() * list.length) : count),
            objectElement: (object = { foo: "bar" }, field) => (field === "key" ? pick(Object.keys(object)) : object[pick(Object.keys(object))]),
            word: () => pick(LOREM),
            words: (count) => words(count || 1 + Math.floor(next() * 3), LOREM).join(" "),
            locale: () => "en",
        },
        name: {
            firstName, lastName,
            findName: () => `${firstName()} ${lastName()}`,
            jobTitle: () => `${pick(["Senior", "Lead", "Junior", "Principal"])} ${pick(JOBS)}`,
            prefix: () => pick(["Mr.", "Ms.", "Mrs.", "Dr."]),
            gender: () => pick(["female", "male", "non-binary"]),
        },
        internet: {
            userName, domainName, domainWord,
            email: (first, last, provider) => `${userName(first, last)}@${provider || pick(FREE_MAIL)}`,
            exampleEmail: (first, last) => `${userName(first, last)}@example.com`,
            url: () => `https://${domainName()}`,
            ip: () => Array.from({ length: 4 }, () => number(255)).join("."),
            ipv6: () => Array.from({ length: 8 }, () => number(65535).toString(16)).join(":"),
            userAgent: () => pick(AGENTS),
            password: (length = 15) => alphaNumeric(length),
            color: () => "#" + Array.from({ length: 3 }, () => pad(number(255).toString(16), 2)).join(""),
            mac: () => Array.from({ length: 6 }, () => pad(number(255).toString(16), 2)).join(":"),
        },
        lorem: {
            word: () => pick(LOREM),
            words: (count = 3) => words(count, LOREM).join(" "),
            sentence,
            sentences: (count = 3) => Array.from({ length: count }, () => sentence()).join(" "),
            paragraph: (count = 3) => Array.from({ length: count }, () => sentence()).join(" "),
            slug: (count = 3) => words(count, LOREM).join("-"),
            text: () => faker.lorem.paragraph(),
        },
        company: {
            companyName: () => `${lastName()} ${pick(COMPANY_SUFFIXES)}`,
            companySuffix: () => pick(COMPANY_SUFFIXES),
            catchPhrase: () => `${pick(ADJECTIVES)} ${pick(LOREM)} ${pick(PRODUCTS).toLowerCase()}`,
        },
        address: {
            city: () => pick(CITIES),
            country: () => pick(COUNTRIES)[0],
            countryCode: () => pick(COUNTRIES)[1],
            streetName: () => `${pick(STREETS)} ${pick(STREET_SUFFIXES)}`,
            streetAddress: () => `${number({ min: 1, max: 9999 })} ${pick(STREETS)} ${pick(STREET_SUFFIXES)}`,
            zipCode: () => pad(number(99999), 5),
            latitude: () => String(number({ min: -90, max: 90, precision: 0.0001 })),
            longitude: () => String(number({ min: -180, max: 180, precision: 0.0001 })),
            timeZone: () => pick(["UTC", "Europe/London", "America/New_York", "Asia/Tokyo", "Europe/Tallinn"]),
        },
        commerce: {
            productName: () => `${pick(ADJECTIVES)} ${pick(MATERIALS)} ${pick(PRODUCTS)}`,
            product: () => pick(PRODUCTS),
            department: () => pick(DEPARTMENTS),
            price: (min = 1, max = 1000, decimals = 2, symbol = "") => symbol + (min + next() * (max - min)).toFixed(decimals),
            color: () => pick(["red", "green", "blue", "black", "white", "orange", "purple"]),
        },
        finance: {
            amount: (min = 0, max = 1000, decimals = 2) => (min + next() * (max - min)).toFixed(decimals),
            currencyCode: () => pick(CURRENCIES),
            account: (length = 8) => Array.from({ length }, () => number(9)).join(""),
        },
        phone: {
            phoneNumber: () => `${number({ min: 200, max: 999 })}-${number({ min: 200, max: 999 })}-${pad(number(9999), 4)}`,
        },
        date: {
            past: (years = 1, ref) => new Date(reference(ref) - next() * years * 365 * dayMs),
            future: (years = 1, ref) => new Date(reference(ref) + next() * years * 365 * dayMs),
            recent: (days = 1, ref) => new Date(reference(ref) - next() * days * dayMs),
            soon: (days = 1, ref) => new Date(reference(ref) + next() * days * dayMs),
            between,
            month: () => pick(["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]),
            weekday: () => pick(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]),
        },
        helpers: {
            randomize: (list = ["a", "b", "c"]) => pick(list),
            shuffle(list = []) {
                const copy = list.slice();
                for (let i = copy.length - 1; i > 0; i--) {
                    const j = Math.floor(next() * (i + 1));
                    [copy[i], copy[j]] = [copy[j], copy[i]];
                }
                return copy;
            },
            slugify: (text = "") => String(text).replace(/ /g, "-").replace(/[^\w.-]+/g, ""),
            replaceSymbols: (text = "") => String(text).replace(/#/g, () => String(number(9))).replace(/\?/g, () => alpha()).replace(/\*/g, () => alphaNumeric()),
        },
        image: {
            imageUrl: (width = 640, height = 480) => `https://picsum.photos/${width}/${height}`,
            avatar: () => `https://i.pravatar.cc/150?u=${uuid()}`,
        },
        system: {
            fileName: () => `${words(2, LOREM).join("_")}.${pick(["txt", "csv", "json", "png", "pdf"])}`,
        },
    };
    return { faker };
})
