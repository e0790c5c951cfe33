"""The action-image codec: render 7-DoF actions as Gaussian-blob images and decode them back.

`render`/`render_pixels` reproduce the reference encoder (docs/reference.md §1); `decode` is our
multi-view decoder (all three blobs, gripper from the blue background, every view, sub-pixel,
with a confidence); `decode_reference` replicates the reference decoder (docs/reference.md §2)
for comparisons.
Imports only numpy, numba, scipy and `aimg.geometry`.
"""

from aimg.codec.decode import DecodedActions, decode
from aimg.codec.reference import decode_reference
from aimg.codec.render import render, render_pixels, to_uint8

__all__ = ["DecodedActions", "decode", "decode_reference", "render", "render_pixels", "to_uint8"]
