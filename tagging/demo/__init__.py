"""The demo world: a generated inventory of advertisers and images, and a CDN that serves it.

``generate_demo`` writes the files and ``manifest.json``; ``DemoInventory`` reads the manifest back
(ground truth per image); :mod:`tagging.demo.cdn` serves the directory over HTTP.
"""

from tagging.demo.generate import (
    HTML_TITLE,
    DemoAdvertiser,
    DemoImage,
    DemoInventory,
    DemoVehicle,
    generate_demo,
)

__all__ = [
    "HTML_TITLE",
    "DemoAdvertiser",
    "DemoImage",
    "DemoInventory",
    "DemoVehicle",
    "generate_demo",
]
