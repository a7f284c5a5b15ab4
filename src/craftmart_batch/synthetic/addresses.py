"""Postal addresses: short ones (narrow shape) or full street addresses (real shape)."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from .common import pick

logger = logging.getLogger(__name__)

# The narrow shape: a city, a street and a house (and often a flat) in one country.
_CITIES = ("Moscow", "Saint Petersburg", "Kazan", "Novosibirsk", "Yekaterinburg",
           "Nizhny Novgorod", "Samara", "Tver", "Vladimir", "Yaroslavl", "Pskov", "Tula")
_STREETS = ("Lenina", "Pushkina", "Gagarina", "Sadovaya", "Mira", "Tverskaya", "Nevsky",
            "Lesnaya", "Shkolnaya", "Tsentralnaya", "Sovetskaya", "Molodezhnaya")

# The real shape: the countries customers and craftsmen live in, as
# (name, share of people, address layout, postcode digits, share with a flat number).
# Layouts: 0 street, house, flat, city, region, postcode; 1 street house, postcode city;
# 2 house street, postcode city; 3 flat, house street, city postcode (UK);
# 4 house street, flat, city, state postcode (US).
_COUNTRIES = (
    ("Russia", 0.62, 0, 6, 0.7),
    ("Belarus", 0.08, 0, 6, 0.7),
    ("Kazakhstan", 0.06, 0, 6, 0.6),
    ("Germany", 0.08, 1, 5, 0.3),
    ("France", 0.05, 2, 5, 0.4),
    ("United Kingdom", 0.05, 3, 0, 0.3),
    ("United States", 0.06, 4, 5, 0.25),
)
# (city, country index, region or state, postcode prefix: its first digits, or the
# outward code of a UK postcode)
_FULL_CITIES = (
    ("Moscow", 0, "", "12"), ("Saint Petersburg", 0, "", "19"),
    ("Kazan", 0, "Republic of Tatarstan", "420"), ("Novosibirsk", 0, "Novosibirsk Oblast", "630"),
    ("Yekaterinburg", 0, "Sverdlovsk Oblast", "620"),
    ("Nizhny Novgorod", 0, "Nizhny Novgorod Oblast", "603"),
    ("Samara", 0, "Samara Oblast", "443"), ("Tver", 0, "Tver Oblast", "170"),
    ("Vladimir", 0, "Vladimir Oblast", "600"), ("Yaroslavl", 0, "Yaroslavl Oblast", "150"),
    ("Pskov", 0, "Pskov Oblast", "180"), ("Tula", 0, "Tula Oblast", "300"),
    ("Krasnodar", 0, "Krasnodar Krai", "350"), ("Vologda", 0, "Vologda Oblast", "160"),
    ("Minsk", 1, "", "220"), ("Grodno", 1, "Grodno Region", "230"),
    ("Brest", 1, "Brest Region", "224"), ("Vitebsk", 1, "Vitebsk Region", "210"),
    ("Almaty", 2, "", "050"), ("Astana", 2, "", "010"),
    ("Karaganda", 2, "Karaganda Region", "100"),
    ("Berlin", 3, "", "10"), ("Munich", 3, "", "80"), ("Hamburg", 3, "", "20"),
    ("Leipzig", 3, "", "04"), ("Freiburg im Breisgau", 3, "", "79"),
    ("Paris", 4, "", "75"), ("Lyon", 4, "", "69"), ("Bordeaux", 4, "", "33"),
    ("Nantes", 4, "", "44"),
    ("London", 5, "", "NW1"), ("London", 5, "", "SE10"), ("Manchester", 5, "", "M4"),
    ("Edinburgh", 5, "", "EH1"), ("Bristol", 5, "", "BS8"),
    ("Portland", 6, "OR", "972"), ("Austin", 6, "TX", "787"), ("Brooklyn", 6, "NY", "112"),
    ("Asheville", 6, "NC", "288"),
)
_FULL_STREETS = (  # per country, in _COUNTRIES order
    ("ul. Lenina", "ul. Pushkina", "ul. Gagarina", "Sadovaya ul.", "prospekt Mira",
     "Tverskaya ul.", "Nevsky prospekt", "Lesnaya ul.", "Shkolnaya ul.", "Tsentralnaya ul.",
     "Sovetskaya ul.", "Molodezhnaya ul.", "Leninsky prospekt", "Kutuzovsky prospekt",
     "ul. Marshala Zhukova", "Bolshaya Pokrovskaya ul.", "naberezhnaya reki Fontanki",
     "Krivoarbatsky pereulok", "Zelyonaya ul.", "Shosse Entuziastov"),
    ("prospekt Nezavisimosti", "ul. Nemiga", "ul. Kalinovskogo", "ul. Sovetskaya",
     "ul. Yakuba Kolasa", "prospekt Pobediteley"),
    ("prospekt Dostyk", "ul. Abaya", "ul. Satpaeva", "ul. Tole Bi", "prospekt Respubliki"),
    ("Hauptstraße", "Bahnhofstraße", "Gartenweg", "Schillerstraße", "Lindenallee",
     "Bergstraße", "Kastanienallee", "Am Mühlbach"),
    ("rue de la Paix", "avenue Victor Hugo", "boulevard Voltaire", "rue des Lilas",
     "place de la République", "rue du Faubourg Saint-Antoine"),
    ("Baker Street", "Church Road", "Victoria Road", "Park Lane", "High Street",
     "Station Road", "Queen's Crescent"),
    ("Maple Avenue", "Oak Street", "Elm Street", "Pine Road", "Washington Boulevard",
     "Cedar Lane", "Martin Luther King Jr. Way"),
)
_UK_LETTERS = tuple("ABDEFGHJLNPQRSTUWXYZ")


def addresses(
    rng: np.random.Generator, n: int, full: np.random.Generator | None = None
) -> pl.Series:
    """``n`` addresses. Short ones (city, street, house, seven in ten a flat) from
    ``rng``; with ``full``, full street addresses drawn from ``full`` instead.

    ``rng`` is drawn from the same way in both cases, so whatever else it makes
    afterwards is the same in both shapes.
    """
    frame = pl.DataFrame({
        "city": pick(_CITIES, rng.integers(0, len(_CITIES), n)),
        "street": pick(_STREETS, rng.integers(0, len(_STREETS), n)),
        "house": rng.integers(1, 120, n),
        "apt": np.where(rng.random(n) < 0.7, rng.integers(1, 300, n), 0),
    })
    if full is not None:
        return full_addresses(full, n)
    apt = pl.when(pl.col("apt") > 0).then(pl.format(", apt. {}", "apt")).otherwise(pl.lit(""))
    return frame.select(
        pl.format("{}, {} st. {}", "city", "street", "house").add(apt).alias("a")
    ).to_series()


def full_addresses(rng: np.random.Generator, n: int) -> pl.Series:
    """``n`` full street addresses: house number, street, sometimes a flat, city,
    region, postcode and country, each country written its own way."""
    share = np.array([c[1] for c in _COUNTRIES])
    country = rng.choice(len(_COUNTRIES), n, p=share / share.sum())
    cities = np.array([c[1] for c in _FULL_CITIES])
    order = np.argsort(cities, kind="stable")
    city_count = np.bincount(cities, minlength=len(_COUNTRIES))
    city_start = np.concatenate(([0], np.cumsum(city_count)[:-1]))
    city = order[city_start[country] + (rng.random(n) * city_count[country]).astype(np.int64)]
    street_count = np.array([len(s) for s in _FULL_STREETS])
    street_start = np.concatenate(([0], np.cumsum(street_count)[:-1]))
    street = street_start[country] + (rng.random(n) * street_count[country]).astype(np.int64)
    layout = np.array([c[2] for c in _COUNTRIES])[country]
    digits = np.array([c[3] for c in _COUNTRIES])[country]
    flat_share = np.array([c[4] for c in _COUNTRIES])[country]
    house = np.where(layout == 4, rng.integers(100, 10_000, n), rng.integers(1, 160, n))
    frame = pl.DataFrame({
        "country": pick(tuple(c[0] for c in _COUNTRIES), country),
        "layout": layout,
        "city": pick(tuple(c[0] for c in _FULL_CITIES), city),
        "region": pick(tuple(c[2] for c in _FULL_CITIES), city),
        "prefix": pick(tuple(c[3] for c in _FULL_CITIES), city),
        "digits": digits,
        "street": pick(tuple(s for streets in _FULL_STREETS for s in streets), street),
        "house": house,
        "flat": np.where(rng.random(n) < flat_share, rng.integers(1, 400, n), 0),
        "building": np.where(rng.random(n) < 0.15, rng.integers(1, 6, n), 0),
        "tail": pl.Series(rng.integers(0, 1_000_000, n)).cast(pl.String).str.zfill(6),
        "uk_digit": rng.integers(1, 10, n),
        "uk_a": pick(_UK_LETTERS, rng.integers(0, len(_UK_LETTERS), n)),
        "uk_b": pick(_UK_LETTERS, rng.integers(0, len(_UK_LETTERS), n)),
    })
    prefix, flat, region = pl.col("prefix"), pl.col("flat"), pl.col("region")
    postcode = (
        pl.when(pl.col("layout") == 3)
        .then(pl.format("{} {}{}{}", "prefix", "uk_digit", "uk_a", "uk_b"))
        .otherwise(prefix + pl.col("tail").str.slice(0, pl.col("digits") - prefix.str.len_chars()))
    )
    frame = frame.with_columns(postcode=postcode)
    has_flat = flat > 0
    layout_expr = pl.col("layout")
    address = (
        pl.when(layout_expr == 0).then(pl.concat_str(
            "street", pl.lit(", "), pl.col("house").cast(pl.String),
            pl.when(pl.col("building") > 0).then(pl.format(", bldg. {}", "building"))
            .otherwise(pl.lit("")),
            pl.when(has_flat).then(pl.format(", apt. {}", "flat")).otherwise(pl.lit("")),
            pl.lit(", "), "city",
            pl.when(region != "").then(pl.lit(", ") + region).otherwise(pl.lit("")),
            pl.lit(", "), "postcode", pl.lit(", "), "country"))
        .when(layout_expr == 1).then(pl.concat_str(
            pl.format("{} {}", "street", "house"),
            pl.when(has_flat).then(pl.format(", apt. {}", "flat")).otherwise(pl.lit("")),
            pl.format(", {} {}, {}", "postcode", "city", "country")))
        .when(layout_expr == 2).then(pl.concat_str(
            pl.format("{} {}", "house", "street"),
            pl.when(has_flat).then(pl.format(", apt. {}", "flat")).otherwise(pl.lit("")),
            pl.format(", {} {}, {}", "postcode", "city", "country")))
        .when(layout_expr == 3).then(pl.concat_str(
            pl.when(has_flat).then(pl.format("Flat {}, ", "flat")).otherwise(pl.lit("")),
            pl.format("{} {}, {} {}, {}", "house", "street", "city", "postcode", "country")))
        .otherwise(pl.concat_str(
            pl.format("{} {}", "house", "street"),
            pl.when(has_flat).then(pl.format(", Apt {}", "flat")).otherwise(pl.lit("")),
            pl.format(", {}, {} {}, {}", "city", "region", "postcode", "country")))
    )
    return frame.select(address.alias("a")).to_series()
