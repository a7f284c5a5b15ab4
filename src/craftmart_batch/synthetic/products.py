"""Products: names, types and descriptions, short (narrow shape) or of real length."""

from __future__ import annotations

import logging
import re

import numpy as np
import polars as pl

from .common import pick

logger = logging.getLogger(__name__)

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

# The real shape: words for descriptions of 300-600 characters.
DESCRIPTION_CHARS = (300, 600)
_CRAFT = (  # per product type, in TYPES order: (ways it is made, materials)
    (("hand-forged", "soldered by hand"), ("sterling silver", "brass", "glass beads")),
    (("wheel-thrown", "hand-built"), ("stoneware clay", "porcelain", "red earthenware")),
    (("hand-woven", "embroidered by hand"), ("linen", "organic cotton", "hemp")),
    (("hand-carved", "turned on a lathe"), ("oak", "birch", "walnut")),
    (("hand-stitched", "cut and stitched by hand"),
     ("vegetable-tanned leather", "full-grain leather", "suede")),
    (("sewn by hand", "carved and sanded by hand"), ("wool felt", "beech wood", "linen")),
    (("hand-poured", "hand-dipped"), ("soy wax", "beeswax", "rapeseed wax")),
    (("cold-processed", "cut by hand"), ("olive oil", "goat milk", "shea butter")),
    (("painted by hand", "painted from life"),
     ("watercolour on cotton paper", "oil on canvas", "gouache on paper")),
    (("hand-knitted", "knitted on a vintage machine"), ("merino wool", "alpaca wool", "mohair")),
    (("made by hand", "assembled by hand"), ("dried flowers", "cotton cord", "reclaimed wood")),
    (("hand-bound", "printed by hand"), ("recycled paper", "cotton paper", "kraft card")),
)
_COLOURS = ("natural", "ivory", "charcoal", "sage green", "terracotta", "deep blue", "mustard",
            "dusty pink", "forest green", "honey", "sand", "burgundy", "sky blue", "warm grey",
            "black", "cream", "olive", "rust")
_FINISHES = ("a matte glaze", "natural oil and wax", "a soft brushed finish",
             "hand-rubbed beeswax", "a satin varnish", "a light patina", "food-safe linseed oil",
             "a glossy glaze", "a clear water-based lacquer")
_TOWNS = ("Suzdal", "Tver", "Kazan", "Vologda", "Pskov", "Yaroslavl", "a village near Tula",
          "Kostroma", "Vyborg", "Rostov Veliky", "Kolomna", "Gorodets", "Minsk", "Almaty")
_STYLES = ("Scandinavian", "rustic", "boho", "minimalist", "classic", "farmhouse", "vintage",
           "modern", "cottage")
_ROOMS = ("the kitchen", "a living room", "a reading corner", "a nursery", "a study",
          "a country house", "a small flat", "the bathroom", "a bedroom", "the hallway")
_OCCASIONS = ("a birthday", "a housewarming", "Mother's Day", "a wedding", "New Year",
              "an anniversary", "a teacher", "a colleague", "yourself", "Valentine's Day")
_PACKAGING = ("recycled kraft paper", "a cotton pouch", "a gift box with tissue paper",
              "a linen bag", "corrugated cardboard with paper filling")
# Sentences, each with the separator before it; {name} is a column of the parts frame.
_OPENING = (
    "{adj} {noun} made by hand in a small workshop in {town}.",
    'From the "{coll}" collection: a {noun} that makes a great gift.',
    "Each {noun} is unique, it's made to order and never mass-produced.",
    "Meet our {adj_lower} {noun}: {way} from {stuff} in small batches.",
    "A {style} {noun} for everyday use, {way} in our studio in {town}.",
    "This {noun} is {way} from {stuff} and finished with {finish}.",
)
_BODY = (  # slots, in the order they appear (a list last); each product keeps some
    (" We use only {stuff} from local suppliers, so no two pieces are exactly alike.",
     " The {stuff} is chosen by hand and every piece is finished with {finish}.",
     " It is {way} from {stuff}; small marks of the process are part of its character.",
     " Made from {stuff} that gets softer and richer in colour over the years."),
    (" The colour is {colour}, close to the photos, though every batch differs slightly.",
     " Available in {colour}; other colours can be made on request.",
     " Its {colour} tone goes well with a {style} interior.",
     " The {colour} shade is mixed by hand, so it may look a little lighter in daylight."),
    (" It looks great in {room} and makes a thoughtful present for {occasion}.",
     " A lovely gift for {occasion}, or a small treat for {room}.",
     " Perfect for {room}; many customers buy two, one to keep and one for {occasion}."),
    ("\nCare: {care}.",
     " Care: {care}, and it will serve you for years.",
     "\nHow to look after it: {care}; avoid harsh detergents."),
    (' Maker\'s note: "I\'ve been making these for {years} years."',
     ' From the maker: "Every {noun} I make is one I would keep for myself."',
     " I learned this craft from my grandmother and have practised it for {years} years."),
    (" Ships within {days} working days, wrapped in {packaging}.",
     " Made to order: please allow {days} days before dispatch.",
     " Ready to ship in {days} days, with delivery across the country and abroad."),
    (" We can add a handwritten card or gift wrapping, just leave a note with your order.",
     " Photos show the actual item; colours may vary slightly between screens.",
     " If you'd like a custom size or engraving, send us a message before ordering.",
     " Each order comes with a small card telling how it was made."),
    ("\n- material: {stuff}\n- size: {size} cm\n- colour: {colour}",
     "\n- size: about {size} cm\n- weight: {weight} g\n- finish: {finish}",
     "\nDimensions: {size} x {size2} cm. Weight: about {weight} g."),
)
_CLOSING = ("\nItem code CM-{code}.", "\nItem code: CM-{code}.")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def product_texts(
    rng: np.random.Generator, type_idx: np.ndarray, full: np.random.Generator | None = None
) -> pl.DataFrame:
    """Per product (its index into TYPES given): name, description, type, alt_type.

    Short descriptions from ``rng``; with ``full``, descriptions of real length
    (DESCRIPTION_CHARS) drawn from ``full`` too. ``rng`` is drawn from the same way in
    both cases.
    """
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
    if full is not None:
        parts = parts.with_columns(real=real_descriptions(full, parts, type_idx))
        description = pl.col("real")
    return parts.select(
        name.alias("name"), description.alias("description"), "type", "alt_type"
    )


def real_descriptions(
    rng: np.random.Generator, parts: pl.DataFrame, type_idx: np.ndarray
) -> pl.Series:
    """Descriptions of DESCRIPTION_CHARS characters for the products of ``parts``.

    An opening sentence, some of the body slots (in their order) and the item code.
    Each product draws a length in the range and a priority per body slot; slots are
    kept by priority while at least half of the next one fits that length and the
    whole stays within the maximum, and further ones until the minimum is reached
    (no sentence is long enough to then pass the maximum).
    """
    n = parts.height
    low, high = DESCRIPTION_CHARS
    way = type_idx * 2 + rng.integers(0, 2, n)
    stuff = type_idx * 3 + rng.integers(0, 3, n)
    words = parts.with_columns(
        adj_lower=pl.col("adj").str.to_lowercase(),
        way=pick(tuple(w for ways, _ in _CRAFT for w in ways), way),
        stuff=pick(tuple(m for _, stuffs in _CRAFT for m in stuffs), stuff),
        colour=_any(rng, _COLOURS, n),
        finish=_any(rng, _FINISHES, n),
        town=_any(rng, _TOWNS, n),
        style=_any(rng, _STYLES, n),
        room=_any(rng, _ROOMS, n),
        occasion=_any(rng, _OCCASIONS, n),
        packaging=_any(rng, _PACKAGING, n),
        days=rng.integers(2, 15, n),
        weight=rng.integers(2, 160, n) * 10,
        size2=rng.integers(5, 120, n),
    )
    pools = (_OPENING, *_BODY, _CLOSING)
    chosen = [_one_of(pool, rng.integers(0, len(pool), n)) for pool in pools]
    sentences = words.select(
        *(expr.alias(f"s{i}") for i, expr in enumerate(chosen))
    )
    lengths = sentences.select(pl.all().str.len_chars()).to_numpy().astype(np.int64)
    fixed = lengths[:, 0] + lengths[:, -1]
    body = lengths[:, 1:-1]
    target = rng.integers(low, high + 1, n)
    order = np.argsort(rng.random(body.shape), axis=1)
    size = np.take_along_axis(body, order, axis=1)
    ranked = size.cumsum(axis=1) + fixed[:, None]  # the length with slots up to this one
    before = ranked - size
    fits = np.logical_and.accumulate(
        (before + size // 2 <= target[:, None]) & (ranked <= high), axis=1)
    keep_ranked = fits | (before < low)
    keep = np.zeros_like(keep_ranked)
    np.put_along_axis(keep, order, keep_ranked, axis=1)
    flags = sentences.with_columns(
        pl.Series(f"k{i}", keep[:, i - 1]) for i in range(1, len(pools) - 1)
    )
    kept = [pl.col("s0")] + [
        pl.when(pl.col(f"k{i}")).then(pl.col(f"s{i}")).otherwise(pl.lit(""))
        for i in range(1, len(pools) - 1)
    ] + [pl.col(f"s{len(pools) - 1}")]
    return flags.select(pl.concat_str(kept).alias("description")).to_series()


def _any(rng: np.random.Generator, pool: tuple[str, ...], n: int) -> pl.Series:
    return pick(pool, rng.integers(0, len(pool), n))


def _one_of(pool: tuple[str, ...], index: np.ndarray) -> pl.Expr:
    """Per row, the sentence ``pool[index]`` with its placeholders filled from columns."""
    which = pl.lit(pl.Series(index))
    expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for i in reversed(range(len(pool))):
        expr = pl.when(which == i).then(_filled(pool[i])).otherwise(expr)
    return expr


def _filled(template: str) -> pl.Expr:
    names = _PLACEHOLDER.findall(template)
    if not names:
        return pl.lit(template)
    return pl.format(_PLACEHOLDER.sub("{}", template), *names)
