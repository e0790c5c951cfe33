"""Contact sheets of episodes: frames with their rendered action images blended on top.

For each view, one row of camera frames with the action image of the recorded pose overlaid
(red blob = tool position, green = 10 cm along tool +x, blue = 10 cm along tool -z), and one row
of the action images alone. If the blobs sit on the gripper in every view, actions and pixels
agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from aimg.codec import render
from aimg.codec.render import BLUE_FLOOR
from aimg.episodes import read_episode

_HEADER_PX = 18
_LABEL_PX = 12


def overlay_actions(frames: np.ndarray, action_images: np.ndarray) -> np.ndarray:
    """Blend action images [N, H, W, 3] float in [0, 1] onto frames [N, H, W, 3] uint8.

    Only the blobs are blended (the blue gripper background is left out), with opacity equal to
    the blob intensity, so the scene stays visible away from the blobs.
    """
    blobs = action_images.copy()
    blobs[..., 2] = np.where(blobs[..., 2] > BLUE_FLOOR, blobs[..., 2], 0.0)
    alpha = np.clip(blobs.max(axis=-1, keepdims=True) * 0.7, 0.0, 0.7)
    colour = blobs / np.maximum(blobs.max(axis=-1, keepdims=True), 1e-6)
    out = frames.astype(np.float32) / 255.0 * (1.0 - alpha) + colour * alpha
    return (out * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def contact_sheet(episode_dir: Path, out: Path, columns: int = 8, scale: int = 2) -> Path:
    """Write the PNG contact sheet of one episode to `out`; returns `out`."""
    episode = read_episode(Path(episode_dir))
    count = episode.num_frames
    picks = np.unique(np.linspace(0, count - 1, min(columns, count)).round().astype(int))
    poses = episode.poses[picks]
    rows, labels = [], []
    for view in episode.view_names:
        frames = np.asarray(episode.frames(view)[picks])
        camera = episode.camera(view)
        actions = render(poses, [camera], camera.height, camera.width)[:, 0]
        rows.append(overlay_actions(frames, actions))
        rows.append((actions * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
        labels += [f"{view}: frames + actions", f"{view}: action images"]
    height, width = rows[0].shape[1] * scale, rows[0].shape[2] * scale
    sheet = Image.new(
        "RGB", (width * len(picks), _HEADER_PX + len(rows) * (height + _LABEL_PX)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    stamps = episode.timestamps_ns[picks]
    header = (
        f"{episode_dir.name}  '{episode.instruction}'  success={episode.success}  "
        f"frames={count}  shown: t={', '.join(f'{(s - stamps[0]) / 1e9:.1f}' for s in stamps)} s"
    )
    draw.text((4, 3), header, fill="black")
    for r, (row, label) in enumerate(zip(rows, labels, strict=True)):
        top = _HEADER_PX + r * (height + _LABEL_PX)
        draw.text((4, top), label, fill="black")
        for c, tile in enumerate(row):
            image = Image.fromarray(tile).resize((width, height), Image.NEAREST)
            sheet.paste(image, (c * width, top + _LABEL_PX))
            if r % 2 == 1:
                draw.text(
                    (c * width + 3, top + _LABEL_PX + 2),
                    f"g={poses[c, 6]:.2f}",
                    fill="white",
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
