"""A synthetic shop whose buying patterns disagree with text similarity: the default demo data.

Products come in bundles of complementary items (a printer + its toner + a cable + paper; a tent
+ a sleeping bag + a headlamp + a stove). Users buy mostly complete parts of 1-3 bundles. Texts
are written so that items of one bundle share almost no words (a toner says nothing about
printing speed), while the same kind of product in different bundles reads alike (all printers
look the same). A zero-shot text model therefore recommends "more printers" to a printer buyer;
a model trained on the interactions learns printer -> toner. Deterministic given the seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# role -> (name templates, descriptive phrases). The first role of a category is the bundle's main
# product (it carries the bundle's brand and model code); accessories mention only the model code.
_CATALOG: dict[str, dict] = {
    "printing": {
        "brands": ["Printelle", "Laservo", "Inkora", "Tonexa", "Pagemaster", "Duplexa", "Officio", "Scriptra"],
        "roles": {
            "printer": (["{brand} {model} Laser Printer", "{brand} {model} Wireless Monochrome Laser Printer",
                         "{brand} {model} Compact Office Laser Printer"],
                        ["Prints up to {n} pages per minute with automatic duplex printing.",
                         "Wireless printing from phones, tablets and laptops over Wi-Fi.",
                         "A 250-sheet paper tray and a manual feed slot for envelopes.",
                         "Crisp 1200 dpi output for office documents and reports.",
                         "Quiet mode and fast first page out in under {s} seconds.",
                         "Energy saving sleep mode and a small footprint for home offices."]),
            "toner": (["Black Toner Cartridge {code}", "High Yield Toner Cartridge {code}, Black"],
                      ["Yields about {n}00 pages at five percent coverage.",
                       "Sealed powder cartridge with a chip for level tracking.",
                       "Fits the {model}.", "Recyclable packaging, return label included.",
                       "Smudge-resistant dark text on plain sheets."]),
            "cable": (["USB 2.0 A-to-B Cable {len} ft", "Shielded USB A Male to B Male Cable, {len} ft"],
                      ["Gold-plated connectors and foil shielding against interference.",
                       "Braided jacket survives repeated bending.",
                       "Plug-and-play, no drivers needed.", "Works with the {model}."]),
            "paper": (["Multipurpose Copy Paper, 500 Sheets", "Bright White Paper Ream, 80 gsm, 500 Sheets"],
                      ["Acid-free, jam-free sheets, letter size.", "Bright white 96 brightness for sharp contrast.",
                       "Smooth finish, sustainably sourced fibre.", "One ream, individually wrapped."]),
        },
    },
    "camping": {
        "brands": ["Trailhaven", "Summitra", "Northpeak", "Wildcrest", "Ridgeway", "Canyonix", "Pinefold", "Alpenlo"],
        "roles": {
            "tent": (["{brand} {model} {n2}-Person Dome Tent", "{brand} {model} Backpacking Tent for {n2}"],
                     ["Waterproof rainfly with taped seams and a {n}00 mm hydrostatic head.",
                      "Freestanding dome design pitches in minutes with colour-coded poles.",
                      "Two doors and two vestibules for gear storage.",
                      "Mesh inner for ventilation on warm nights.",
                      "Lightweight aluminium poles and a packed weight of {s} kg.",
                      "Includes stakes, guy lines and a stuff sack."]),
            "sleeping_bag": (["Mummy Sleeping Bag, {s} C Comfort", "Down Sleeping Bag with Compression Sack"],
                             ["Draft collar and insulated hood keep warmth in.",
                              "Water-resistant shell, soft brushed lining.",
                              "Zip baffle prevents cold spots.", "Sized to fit the {model} floor."]),
            "headlamp": (["Rechargeable LED Headlamp, {n}0 Lumens", "Head Torch with Red Night Mode"],
                         ["Adjustable elastic strap and tilting beam.", "USB-C charging, {s} hours runtime.",
                          "IPX6 rain resistant housing.", "Hang it inside the {model}."]),
            "stove": (["Compact Gas Canister Stove", "Ultralight Backpacking Burner with Piezo Igniter"],
                      ["Boils a litre of water in about {s} minutes.", "Folding pot supports and a carry case.",
                       "Screws onto standard isobutane canisters.", "Cook in the vestibule of the {model}."]),
        },
    },
    "coffee": {
        "brands": ["Baristel", "Crema Nova", "Espressia", "Roastwell", "Caffetto", "Brewline", "Moka Prime", "Lattera"],
        "roles": {
            "espresso_machine": (["{brand} {model} Espresso Machine", "{brand} {model} Semi-Automatic Espresso Maker"],
                                 ["15 bar pump pressure for rich crema.",
                                  "Stainless steel boiler heats up in {s} seconds.",
                                  "Steam wand for cappuccino and latte drinks.",
                                  "Removable {n}00 ml water tank and drip tray.",
                                  "Single and double shot portafilter baskets.",
                                  "Programmable shot volume and temperature control."]),
            "beans": (["Whole Bean Dark Roast, 1 kg", "Single Origin Arabica Beans, Medium Roast"],
                      ["Notes of cocoa, caramel and toasted nuts.", "Roasted in small batches, freshness valve bag.",
                       "Rainforest certified farms.", "Dialled in for the {model}."]),
            "frother": (["Stainless Milk Frothing Pitcher, {n}00 ml", "Electric Milk Frother and Warmer"],
                        ["Pointed spout for latte art.", "Measurement markings etched inside.",
                         "Dishwasher safe.", "Pairs with the {model} wand."]),
            "descaler": (["Descaling Solution, 2 Pack", "Natural Limescale Remover Liquid"],
                         ["Removes mineral buildup from boilers and pipes.", "Biodegradable citric formula.",
                          "Each bottle treats one full cycle.", "Recommended for the {model} every month."]),
        },
    },
    "photo": {
        "brands": ["Optiva", "Lumeris", "Shutterline", "Pixelon", "Aperta", "Fotonik", "Clarix", "Vistara"],
        "roles": {
            "camera": (["{brand} {model} Mirrorless Camera Body", "{brand} {model} {n2}4 MP Mirrorless Digital Camera"],
                       ["Full HD and 4K video recording at 30 frames per second.",
                        "Fast hybrid autofocus with eye detection.",
                        "Tilting touchscreen and electronic viewfinder.",
                        "In-body image stabilisation for sharp handheld shots.",
                        "Weather sealed magnesium body.", "Burst shooting up to {s} fps."]),
            "lens": (["50 mm f/1.8 Prime Lens", "18-55 mm Zoom Lens with Stabiliser"],
                     ["Bright aperture for soft background blur.", "Quiet stepping motor.",
                      "Nine rounded blades, multi-coated glass.", "Mount matches the {model}."]),
            "memory_card": (["SDXC Memory Card {n2}28 GB, UHS-II", "High Speed SD Card, V60"],
                            ["Read speeds up to {n}0 MB/s.", "Shockproof, waterproof and X-ray proof.",
                             "Lifetime limited warranty.", "Tested in the {model}."]),
            "camera_bag": (["Padded Shoulder Bag for Gear", "Sling Backpack with Rain Cover"],
                           ["Customisable dividers and a tablet sleeve.", "Quick side access zipper.",
                            "Water-repellent nylon.", "Holds the {model} with two extra optics."]),
        },
    },
    "gaming": {
        "brands": ["Nexplay", "Gamora", "Vortix", "Playcore", "Arcadia", "Pixelforge", "Quantix", "Hyperlude"],
        "roles": {
            "console": (["{brand} {model} Video Game Console", "{brand} {model} Gaming Console 1 TB"],
                        ["Plays games in 4K at up to 120 frames per second.",
                         "Solid state storage for fast loading.", "Online multiplayer and streaming apps.",
                         "Backwards compatible with last generation games.",
                         "Ray tracing graphics and HDR output.", "Includes one wireless gamepad."]),
            "controller": (["Wireless Controller, Midnight Black", "Pro Controller with Back Paddles"],
                           ["Haptic feedback and adaptive triggers.", "Rechargeable battery, {s} hours of play.",
                            "Textured grips.", "Pairs instantly with the {model}."]),
            "game": (["Open World Adventure Game", "Racing Championship {n2}0"],
                     ["Explore a vast fantasy kingdom with friends.", "Over {n}0 licensed cars and tracks.",
                      "Story campaign and online seasons.", "Physical disc edition for the {model}."]),
            "headset": (["Surround Sound Headset with Mic", "Wireless Over-Ear Headset"],
                        ["Noise cancelling boom microphone.", "Memory foam ear cushions.",
                         "Low latency 2.4 GHz dongle.", "Chat audio tuned for the {model}."]),
        },
    },
    "cycling": {
        "brands": ["Velocita", "Pedalon", "Gearline", "Roadster", "Cadenza", "Spokewell", "Trailbike", "Ciclo"],
        "roles": {
            "bike": (["{brand} {model} Hybrid Bike", "{brand} {model} Aluminium City Bicycle, 21 Speed"],
                     ["Lightweight aluminium frame with suspension fork.",
                      "Shimano 21 speed drivetrain and disc brakes.",
                      "700c wheels with puncture resistant tyres.",
                      "Ergonomic saddle and upright riding position.",
                      "Frame sizes for riders from {n2}50 to 195 cm.", "Mounts for rack and fenders."]),
            "helmet": (["Ventilated Cycling Helmet", "Commuter Helmet with Rear Light"],
                       ["In-mould shell with {n2}8 air vents.", "Dial fit adjustment and padded straps.",
                        "Certified to EN 1078.", "Colour matched to the {model}."]),
            "lock": (["Hardened Steel U-Lock", "Folding Chain Lock with Two Keys"],
                     ["Resists bolt cutters and leverage attacks.", "Vinyl coating protects paint.",
                      "Mounting bracket included.", "Long enough for the {model} frame and wheel."]),
            "pump": (["Floor Pump with Gauge", "Mini Hand Pump, Presta and Schrader"],
                     ["Inflates up to 160 psi.", "Large analogue dial.", "Stable steel base.",
                      "Valve head fits the {model} tubes."]),
        },
    },
    "aquarium": {
        "brands": ["Aquavita", "Reefline", "Bluelagoon", "Coralis", "Tidepool", "Marinex", "Fishhaven", "Hydrora"],
        "roles": {
            "tank": (["{brand} {model} {n2}0 Litre Glass Aquarium", "{brand} {model} Aquarium Starter Tank"],
                     ["Crystal clear glass with silicone sealed edges.",
                      "LED lid light with day and night modes.",
                      "Fits on a standard cabinet or desk.", "Rounded front corners for a wide view.",
                      "Suitable for tropical freshwater fish.", "Includes a lid with feeding hatch."]),
            "filter": (["Internal Power Filter {n}00 L/h", "Canister Filter with Media Baskets"],
                       ["Three stage mechanical, biological and chemical filtration.", "Whisper quiet motor.",
                        "Adjustable flow.", "Sized for the {model} volume."]),
            "fish_food": (["Tropical Flakes 250 ml", "Sinking Pellets for Bottom Feeders"],
                          ["Balanced nutrition with vitamins.", "Colour enhancing formula.",
                           "Does not cloud the water.", "Feed twice daily in the {model}."]),
            "heater": (["Adjustable Heater 100 W", "Submersible Thermostat Heater"],
                       ["Keeps water at a steady {n2}5 degrees.", "Shatterproof housing.",
                        "Automatic shut-off.", "Right wattage for the {model}."]),
        },
    },
    "phone": {
        "brands": ["Zentro", "Mobilis", "Callisto", "Pixelia", "Novaphone", "Orbit", "Teleon", "Voxa"],
        "roles": {
            "smartphone": (["{brand} {model} Smartphone 128 GB", "{brand} {model} 5G Smartphone, Unlocked"],
                           ["6.5 inch OLED display with 120 Hz refresh rate.",
                            "Triple camera system with night mode.",
                            "All-day battery with fast charging.", "Octa-core processor and 8 GB RAM.",
                            "Dual SIM and 5G connectivity.", "Face unlock and in-display fingerprint reader."]),
            "case": (["Clear Shockproof Case", "Slim Silicone Cover, Navy"],
                     ["Raised edges protect against drops.", "Soft microfibre lining.",
                      "Precise cutouts.", "Made for the {model}."]),
            "screen_protector": (["Tempered Glass Protector, 2 Pack", "Privacy Film, 9H Hardness"],
                                 ["Bubble-free installation frame.", "Oleophobic coating resists smudges.",
                                  "Case friendly.", "Cut for the {model}."]),
            "charger": (["65 W USB-C Wall Charger", "Wireless Charging Pad 15 W"],
                        ["GaN technology in a compact plug.", "Over-heat protection.",
                         "Includes a 1 m cable.", "Fast charges the {model}."]),
        },
    },
    "baking": {
        "brands": ["Bakewell", "Doughmaster", "Mixara", "Kitchenaid Pro", "Cremora", "Whiskly", "Ovenly", "Floury"],
        "roles": {
            "stand_mixer": (["{brand} {model} Stand Mixer", "{brand} {model} Tilt-Head Stand Mixer, 5 L"],
                            ["Powerful {n}00 W motor with ten speeds.",
                             "Planetary mixing action reaches the whole bowl.",
                             "Stainless steel bowl with handle.", "Splash guard with pouring chute.",
                             "Die-cast metal housing.", "Includes whisk, beater and dough hook."]),
            "baking_tin": (["Non-Stick Springform Tin 24 cm", "Loaf Pan Set of 2"],
                           ["Heavy gauge carbon steel.", "Leak-proof clasp.", "Easy release coating.",
                            "Batter from the {model} fills it in one go."]),
            "flour": (["Strong Bread Flour 1.5 kg", "Italian 00 Pizza Flour"],
                      ["High protein for airy loaves.", "Stone milled.", "Unbleached wheat.",
                       "Knead it with the {model} hook."]),
            "scale": (["Digital Kitchen Scale 5 kg", "Precision Scale with Bowl"],
                      ["Tare function and gram accuracy.", "Easy clean glass top.",
                       "Auto-off saves battery.", "Weigh before the {model} bowl."]),
        },
    },
    "garden": {
        "brands": ["Greenmow", "Lawnstar", "Yardix", "Grassline", "Hedgeway", "Turfco", "Bloomfield", "Verdant"],
        "roles": {
            "lawn_mower": (["{brand} {model} Cordless Lawn Mower", "{brand} {model} Electric Rotary Lawnmower, 37 cm"],
                           ["Cutting width of 37 cm with six height settings.",
                            "Brushless motor runs quiet and long.", "Collapsible handle for storage.",
                            "Large grass box of {n2}0 litres.", "Mulching plug included.",
                            "Covers about {n}00 square metres per charge."]),
            "battery": (["36 V Lithium Battery 4 Ah", "Spare Power Pack with Fuel Gauge"],
                        ["Charge level indicator.", "No memory effect.",
                         "Interchangeable across the tool range.", "Slots into the {model}."]),
            "grass_seed": (["Hard Wearing Grass Seed 2 kg", "Shady Lawn Seed Mix"],
                           ["Germinates in ten days.", "Drought tolerant ryegrass blend.",
                            "Covers {n2}0 square metres.", "Sow before the first {model} cut."]),
            "gloves": (["Thorn Proof Gardening Gloves", "Nitrile Coated Work Gloves, 3 Pairs"],
                       ["Breathable back.", "Reinforced fingertips.", "Machine washable.",
                        "Good grip on the {model} handle."]),
        },
    },
}

_ACCESSORY_MAKERS = ["Univo", "Basix", "Maxpro", "Primeline", "Everyday", "Kinetix", "Solido", "Tecora",
                     "Amberly", "Novex"]

# Bump whenever the generator's output changes: it is part of the prepared-set fingerprint.
SHOP_VERSION = 3
N_BUNDLES_PER_CATEGORY = 10  # 10 categories x 10 = 100 bundles of 4 items -> 400 items


def _render(rng: np.random.Generator, template: str, **kw) -> str:
    values = {"n": int(rng.integers(2, 9)), "n2": int(rng.integers(1, 5)), "s": int(rng.integers(3, 12)),
              "len": int(rng.choice([3, 6, 10])), **kw}
    return template.format(**values)


def _describe(rng: np.random.Generator, names: list[str], phrases: list[str], k: int, **kw) -> str:
    name = _render(rng, names[int(rng.integers(len(names)))], **kw)
    # Most phrases of the role, in random order: same-role items read alike across bundles.
    picks = rng.choice(len(phrases), size=min(k, len(phrases)), replace=False)
    body = " ".join(_render(rng, phrases[i], **kw) for i in sorted(picks))
    return f"{name}. {body}"


def shop_items(seed: int = 0, n_bundles_per_category: int = N_BUNDLES_PER_CATEGORY) -> pd.DataFrame:
    """The catalog: item_id ("b017-toner"), text, category, bundle, role."""
    rng = np.random.default_rng(seed)
    rows = []
    bundle = 0
    for category, spec in _CATALOG.items():
        roles = list(spec["roles"])
        brands = spec["brands"]
        for b in range(n_bundles_per_category):
            brand = brands[b % len(brands)]
            model = f"{brand[:2].upper()}-{int(rng.integers(100, 999))}{'XS'[int(rng.integers(2))]}"
            code = f"{model.split('-')[0]}{int(rng.integers(10, 99))}"
            for r_i, role in enumerate(roles):
                names, phrases = spec["roles"][role]
                if r_i == 0:
                    text = _describe(rng, names, phrases, 5, brand=brand, model=model, code=code)
                else:
                    # Own maker and a unique part number: accessories of different bundles must not
                    # collapse into one text, yet share no words with their bundle's main product.
                    maker = _ACCESSORY_MAKERS[int(rng.integers(len(_ACCESSORY_MAKERS)))]
                    sku = f"{chr(65 + int(rng.integers(26)))}{int(rng.integers(1000, 9999))}"
                    text = f"{maker} " + _describe(rng, names, phrases, 3, model=model, code=code, sku=sku)
                    text = text.replace(". ", f" {sku}. ", 1)
                rows.append({"item_id": f"b{bundle:03d}-{role}", "text": text, "category": category,
                             "bundle": bundle, "role": role})
            bundle += 1
    return pd.DataFrame(rows)


def generate_shop(seed: int = 0, n_users: int = 640, n_bundles_per_category: int = N_BUNDLES_PER_CATEGORY,
                  noise: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) of the synthetic shop.

    interactions: user_id, item_id, rating (4-5 for bundle purchases, 1-5 for noise), timestamp.
    items: item_id, text, category, bundle, role, group (= bundle, used by the item split to keep
    every bundle partly warm).
    """
    items = shop_items(seed, n_bundles_per_category)
    rng = np.random.default_rng(seed + 1)
    by_bundle = items.groupby("bundle")["item_id"].apply(list).to_dict()
    n_bundles = len(by_bundle)
    all_ids = items["item_id"].to_numpy()
    rows = []
    for u in range(n_users):
        t = 1_600_000_000 + int(rng.integers(0, 3_000_000))
        n_b = int(rng.choice([1, 2, 3], p=[0.1, 0.5, 0.4]))
        for b in rng.choice(n_bundles, size=n_b, replace=False):
            members = by_bundle[int(b)]
            # The main product is bought first; then most of its complements.
            bought = [members[0]] + [m for m in members[1:] if rng.random() < 0.85]
            if len(bought) < 2:
                bought.append(members[1 + int(rng.integers(len(members) - 1))])
            for m in bought:
                t += int(rng.integers(3_600, 7 * 86_400))
                rating = 5.0 if rng.random() < 0.7 else (4.0 if rng.random() < 0.8 else 3.0)
                rows.append((f"u{u:04d}", m, rating, t))
        while rng.random() < noise * 3:
            t += int(rng.integers(3_600, 30 * 86_400))
            rows.append((f"u{u:04d}", str(all_ids[int(rng.integers(len(all_ids)))]), float(rng.integers(1, 6)), t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    inter["rating"] = inter["rating"].astype(np.float32)
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    items["group"] = items["bundle"]
    return inter, items



# ---------------------------------------------------------------- the shop at any size (issue 12)

ITEMS_PER_BUNDLE = 4
CATEGORIES = len(_CATALOG)
_BOUGHT_PER_BUNDLE = 1 + 0.85 * (ITEMS_PER_BUNDLE - 1)  # the main product + most accessories


def generate_scaled_shop(n_users: int, n_items: int, n_interactions: int, seed: int = 0,
                         noise: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The shop's catalog and buying pattern at a chosen size, in memory proportional to the output.

    `n_items` must be a multiple of 40 (10 categories × bundles of 4). Users buy bundles as in the
    demo shop (main product, then each accessory with probability 0.85), bundles drawn with a
    power-law popularity so that head, middle and tail differ; a `noise` share of the rows are random
    items with random ratings. Exactly `n_interactions` rows come out (before preprocessing drops
    duplicate pairs and low ratings). Every step is vectorised NumPy except the texts (one short
    template rendering per item), so 10^6 items and 2·10^7 rows take seconds to a few minutes.
    """
    per_cat = ITEMS_PER_BUNDLE * CATEGORIES
    if n_items <= 0 or n_items % per_cat:
        raise ValueError(f"items must be a positive multiple of {per_cat} "
                         f"({CATEGORIES} categories × bundles of {ITEMS_PER_BUNDLE}), got {n_items}")
    if n_users <= 0 or n_interactions < 2 * n_users:
        raise ValueError(f"interactions ({n_interactions}) must be at least twice the users ({n_users})")
    items = shop_items(seed, n_items // per_cat)
    n_bundles = n_items // ITEMS_PER_BUNDLE
    # items are written bundle by bundle, main product first: row = bundle * 4 + role.
    rng = np.random.default_rng(seed + 1)

    # Bundle purchases: every user gets at least two, the rest go to users at random.
    n_picks = max(int(round(n_interactions * (1 - noise) / _BOUGHT_PER_BUNDLE)), 2 * n_users)
    pick_user = np.concatenate([np.repeat(np.arange(n_users), 2), rng.integers(0, n_users, n_picks - 2 * n_users)])
    pick_user.sort(kind="stable")
    weights = 1.0 / (np.arange(n_bundles) + 10.0) ** 0.8  # power-law popularity over a shuffled catalog
    bundle_of_rank = rng.permutation(n_bundles)
    pick_bundle = bundle_of_rank[rng.choice(n_bundles, size=n_picks, p=weights / weights.sum())]

    # Expand each pick to its four items; keep the main product and ~85 % of the accessories.
    role = np.tile(np.arange(ITEMS_PER_BUNDLE), n_picks)
    keep = (role == 0) | (rng.random(role.size) < 0.85)
    user = np.repeat(pick_user, ITEMS_PER_BUNDLE)[keep]
    item = (np.repeat(pick_bundle, ITEMS_PER_BUNDLE) * ITEMS_PER_BUNDLE + role)[keep]
    del role, keep
    n_noise = n_interactions - user.size
    if n_noise < 0:  # the two-per-user floor overshot: drop random bundle rows
        rows = np.sort(rng.choice(user.size, size=n_interactions, replace=False))
        user, item, n_noise = user[rows], item[rows], 0
    rating = np.where(rng.random(user.size) < 0.7, 5.0, np.where(rng.random(user.size) < 0.8, 4.0, 3.0))
    user = np.concatenate([user, rng.integers(0, n_users, n_noise)])
    item = np.concatenate([item, rng.integers(0, n_items, n_noise)])
    rating = np.concatenate([rating, rng.integers(1, 6, n_noise).astype(float)])

    # Timestamps: each user's rows in purchase order, hours to days apart, from a per-user start.
    order = np.lexsort((np.arange(user.size), user))
    user, item, rating = user[order], item[order], rating[order]
    gaps = rng.integers(3_600, 7 * 86_400, user.size)
    clock = np.cumsum(gaps)
    first = np.searchsorted(user, user, side="left")  # index of each user's first row
    start = 1_600_000_000 + rng.integers(0, 3_000_000, n_users)
    timestamp = start[user] + clock - clock[first] + gaps[first]
    width = len(str(n_users - 1))
    inter = pd.DataFrame({
        "user_id": pd.Categorical.from_codes(user, [f"u{u:0{width}d}" for u in range(n_users)]),
        "item_id": pd.Categorical.from_codes(item, items["item_id"].tolist()),
        "rating": rating.astype(np.float32),
        "timestamp": timestamp.astype(np.int64),
    })
    items["group"] = items["bundle"]
    return inter, items
