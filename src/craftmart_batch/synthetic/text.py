"""The words of the synthetic marketplace: names, addresses, product names and descriptions."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from .common import pick

logger = logging.getLogger(__name__)

FIRST_NAMES = (
    ("Anna", True), ("Maria", True), ("Elena", True), ("Olga", True), ("Natalia", True),
    ("Irina", True), ("Svetlana", True), ("Tatiana", True), ("Daria", True), ("Sofia", True),
    ("Emma", True), ("Chloe", True), ("Zoe", True), ("Alexei", False), ("Dmitry", False),
    ("Ivan", False), ("Sergei", False), ("Andrei", False), ("Mikhail", False),
    ("Nikolai", False), ("Pavel", False), ("Oleg", False), ("Artem", False), ("Liam", False),
    ("Noah", False), ("Hugo", False), ("Leo", False), ("Lucas", False),
)
LAST_NAMES = (
    "Petrov", "Ivanov", "Smirnov", "Kuznetsov", "Popov", "Volkov", "Sokolov", "Lebedev",
    "Kozlov", "Novikov", "Morozov", "Orlov", "Fedorov", "Egorov", "Pavlov", "Belyaev",
    "Nikitin", "Karpov", "Smith", "Taylor", "Brown", "Dubois", "Rossi", "Garcia",
    "O'Connor", "O'Brien", "D'Angelo",
)
DOMAINS = ("mail.com", "gmail.com", "yandex.ru", "mail.ru", "outlook.com", "inbox.ru",
            "proton.me", "craftmail.org")
_CITIES = ("Moscow", "Saint Petersburg", "Kazan", "Novosibirsk", "Yekaterinburg",
           "Nizhny Novgorod", "Samara", "Tver", "Vladimir", "Yaroslavl", "Pskov", "Tula")
_STREETS = ("Lenina", "Pushkina", "Gagarina", "Sadovaya", "Mira", "Tverskaya", "Nevsky",
            "Lesnaya", "Shkolnaya", "Tsentralnaya", "Sovetskaya", "Molodezhnaya")
TYPES = ("jewelry", "ceramics", "textiles", "woodwork", "leather goods", "toys", "candles",
          "soap", "paintings", "knitwear", "home decor", "stationery")
_NOUNS = (  # four per product type, in _TYPES order
    "silver ring", "beaded bracelet", "pendant", "earrings",
    "mug", "vase", "plate", "teapot",
    "linen tablecloth", "embroidered towel", "quilt", "cushion cover",
    "cutting board", "spoon set", "jewelry box", "wall shelf",
    "wallet", "belt", "card holder", "notebook cover",
    "teddy bear", "rag doll", "wooden puzzle", "rocking horse",
    "soy candle", "beeswax candle", "scented candle set", "candle holder",
    "lavender soap", "honey soap", "bath bomb set", "shampoo bar",
    "watercolor landscape", "oil portrait", "city sketch", "still life",
    "wool scarf", "knitted hat", "mittens", "cardigan",
    "macrame wall hanging", "dried flower wreath", "photo frame", "mosaic mirror",
    "leather journal", "greeting card set", "bookmark", "hand-bound sketchbook",
)
_ADJECTIVES = ("Handmade", "Rustic", "Vintage", "Cozy", "Minimalist", "Hand-painted",
               "Nordic", "Classic", "Boho", "Tiny", "Elegant", "Bright")
_COLLECTIONS = ("Aurora", "Grandma's Garden", "Taiga", "Sea Breeze", "Birch", "White Nights",
                "Maker's Choice", "Old Town")
_MATERIALS = ("linen", "oak", "birch", "clay", "silver", "wool", "cotton", "leather",
              "beeswax", "glass", "paper")
_CARE = ("hand wash only", "wipe with a dry cloth", "keep away from direct sunlight",
         "don't put it in the dishwasher")


def addresses(rng: np.random.Generator, n: int) -> pl.Series:
    """``n`` addresses: city, street, house and (seven in ten) a flat."""
    frame = pl.DataFrame({
        "city": pick(_CITIES, rng.integers(0, len(_CITIES), n)),
        "street": pick(_STREETS, rng.integers(0, len(_STREETS), n)),
        "house": rng.integers(1, 120, n),
        "apt": np.where(rng.random(n) < 0.7, rng.integers(1, 300, n), 0),
    })
    apt = pl.when(pl.col("apt") > 0).then(pl.format(", apt. {}", "apt")).otherwise(pl.lit(""))
    return frame.select(
        pl.format("{}, {} st. {}", "city", "street", "house").add(apt).alias("a")
    ).to_series()


def product_texts(rng: np.random.Generator, type_idx: np.ndarray) -> pl.DataFrame:
    """Per product (its index into TYPES given): name, description, type, alt_type."""
    n_prod = len(type_idx)
    parts = pl.DataFrame({
        "type": pick(TYPES, type_idx),
        "alt_type": pick(TYPES, (type_idx + rng.integers(1, len(TYPES), n_prod)) % len(TYPES)),
        "noun": pick(_NOUNS, type_idx * 4 + rng.integers(0, 4, n_prod)),
        "adj": pick(_ADJECTIVES, rng.integers(0, len(_ADJECTIVES), n_prod)),
        "coll": pick(_COLLECTIONS, rng.integers(0, len(_COLLECTIONS), n_prod)),
        "has_coll": rng.random(n_prod) < 0.4,
        "material": pick(_MATERIALS, rng.integers(0, len(_MATERIALS), n_prod)),
        "care": pick(_CARE, rng.integers(0, len(_CARE), n_prod)),
        "size": rng.integers(5, 120, n_prod),
        "years": rng.integers(2, 40, n_prod),
        "template": rng.integers(0, 5, n_prod),
        "code": pl.Series(np.arange(1, n_prod + 1)).cast(pl.String).str.zfill(6),
    })
    name = pl.format("{} {}", "adj", "noun") + pl.when("has_coll").then(
        pl.format(' "{}"', "coll")).otherwise(pl.lit(""))
    template = pl.col("template")
    description = (
        pl.when(template == 0)
        .then(pl.format("{} {} made by hand in a small workshop. Item code CM-{}.",
                        "adj", "noun", "code"))
        .when(template == 1)
        .then(pl.format('From the "{}" collection: a {} that makes a great gift. '
                        "Item code CM-{}.", "coll", "noun", "code"))
        .when(template == 2)
        .then(pl.format("Each {} is unique, it's made to order.\nCare: {}.\nItem code CM-{}.",
                        "noun", "care", "code"))
        .when(template == 3)
        .then(pl.format("{} {}\n- material: {}\n- size: {} cm\nItem code CM-{}.",
                        "adj", "noun", "material", "size", "code"))
        .otherwise(pl.format("Maker's note: \"I've been making these for {} years.\"\n"
                             "Item code CM-{}.", "years", "code"))
    )
    return parts.select(
        name.alias("name"), description.alias("description"), "type", "alt_type"
    )
