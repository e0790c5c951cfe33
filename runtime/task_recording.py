"""Recording one daemon task as an episode: frames, arm states, commands, plans, events, outcome.

Every task the daemon runs becomes one `aimg.episodes` episode, so a task can be replayed,
shown (`aimg sim show`) and trained on (`aimg train --data`) like a collected one. The episode is
written through `EpisodeWriter` into a hidden temporary directory and published by one rename at
`commit`: a kill -9 mid-task leaves only that hidden directory (removed on the next start by
`aimg.episodes.remove_stale_temp_dirs(root)`), never a half-written episode, and episodes
committed earlier are untouched.

Per-frame data: the synchronised camera frames and the measured tool pose at each frame (the
episode's `poses`). Everything else is a stream (docs/episodes.md, "Streams"):

    arm_time_ns [N] int64, arm_action [N, 7] float64, arm_error [N] int32      arm states
    command_time_ns [M] int64, command_action [M, 7] float64, command_segment [M] int64
    plan_observation_ns [P] int64, plan_ready_ns [P] int64, plan_times_ns [P, K] int64,
    plan_actions [P, K, 7] float64 (decoded, NaN where a frame did not decode),
    plan_confidence [P, K] float32 (the waypoints' confidence, what the safety gate sees),
    plan_action_images [P, K, V, H, W, 3] uint8 (the predicted action images)

Every stream is always present (length 0 when nothing of its kind happened; then unknown item
sizes are 0 too). meta.json "metadata" holds the outcome, one record per plan (timings,
latency, how many waypoints were submitted, its row in the plan_* streams) and the safety events.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aimg.episodes import EpisodeWriter
from aimg.episodes.schema import metadata_json
from aimg.episodes.writer import NpyAppender
from aimg.geometry import Camera, matrix_to_action
from aimg.runtime.safety import Command, SafetyEvent

if TYPE_CHECKING:  # the policy pulls in torch; the daemon's main process need not load it
    from aimg.runtime.policy import Plan

RECORDED_BY = "aimg daemon"

#: metadata keys the recorder writes itself; the caller's metadata may not use them.
RESERVED_METADATA = frozenset(
    {
        "recorded_by",
        "outcome",
        "reason",
        "success",
        "plans",
        "plans_not_in_streams",
        "frames_skipped",
        "safety_events",
    }
)


class TaskRecording:
    """A thread-safe recorder of one task; `commit` publishes it as an episode atomically.

    cameras: the recorded views (name -> static Camera at the frames' size), in view order.
    Frames go to disk as they arrive (EpisodeWriter), and so do the plans' action images (an
    `open_stream` appended at every `add_plan`: 300 plans of 5 x 2 x 64 x 64 x 3 are 37 MB,
    of 8 x 2 x 128 x 128 x 3 236 MB, none of it in memory); arm states, commands and the rest of
    the plans (a few hundred bytes each) stay in memory until `commit`. One lock serialises
    every call, so the task thread, the recorder thread and the event thread may call at once.
    Calls after `commit` or `abort` are ignored (a thread may race the end of the task).
    """

    def __init__(
        self,
        root: Path,
        instruction: str,
        task: str,
        cameras: Mapping[str, Camera],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        for view, camera in cameras.items():
            if not isinstance(camera, Camera):
                raise ValueError(f"cameras['{view}'] must be a static aimg.geometry.Camera")
        self.metadata = _caller_metadata(metadata)
        self.views = tuple(cameras)
        self._lock = threading.Lock()
        self._writer = EpisodeWriter(root, instruction, task, dict(cameras))
        self._closed = False
        self._frames_skipped = 0
        self._last_frame_ns: int | None = None
        self._arm_time: list[int] = []
        self._arm_pose: list[np.ndarray] = []
        self._arm_gripper: list[float] = []
        self._arm_error: list[int] = []
        self._command_times: list[np.ndarray] = []  # chunks, one per add_commands call
        self._command_actions: list[np.ndarray] = []
        self._command_segments: list[np.ndarray] = []
        self._plans: list[dict[str, Any]] = []  # metadata record per plan
        self._plan_rows: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._plan_images: NpyAppender | None = None
        self._plan_shape: tuple[int, tuple[int, ...]] | None = None  # (K, image item shape)
        self._events: list[dict[str, Any]] = []

    @property
    def num_frames(self) -> int:
        return self._writer.num_frames

    @property
    def num_plans(self) -> int:
        """Plans added (including any whose shape kept them out of the plan_* streams)."""
        return len(self._plans)

    @property
    def temp_dir(self) -> Path:
        """The hidden directory the episode is written into until `commit`."""
        return self._writer.temp_dir

    def add_frames(
        self, images: Mapping[str, np.ndarray], time_ns: int, tool_pose: np.ndarray, gripper: float
    ) -> bool:
        """Append one synchronised frame set and the arm's state at `time_ns`.

        images: view -> uint8 [H, W, 3] RGB (views not recorded are ignored); tool_pose: [4, 4]
        TCP-to-base (m); gripper: openness, 1 = open (clipped to [0, 1], a sensor's rounding
        must not end the recording). Returns False, recording nothing, if `time_ns` is not after
        the previous frame's (episode timestamps strictly increase), the pose is unknown (not
        finite, not a rotation) or the recording has ended; skipped frames are counted in the
        metadata.
        """
        pose = np.asarray(tool_pose, dtype=np.float64)[None]
        action = _to_actions(pose, np.clip([gripper], 0.0, 1.0))[0]
        with self._lock:
            if self._closed:
                return False
            late = self._last_frame_ns is not None and time_ns <= self._last_frame_ns
            if late or not np.isfinite(action).all():
                self._frames_skipped += 1
                return False
            self._writer.append({view: images[view] for view in self.views}, action, int(time_ns))
            self._last_frame_ns = int(time_ns)
            return True

    def add_arm_state(
        self, time_ns: int, tool_pose: np.ndarray, gripper: float, error_code: int
    ) -> None:
        """One measured arm state (any rate): tool_pose [4, 4] TCP-to-base, gripper 1 = open.

        An unknown pose (NaN, or a zero matrix before the arm reported) is stored as NaN.
        """
        pose = np.array(tool_pose, dtype=np.float64)
        if pose.shape != (4, 4):
            raise ValueError(f"tool_pose must be a [4, 4] matrix, got {list(pose.shape)}")
        with self._lock:
            if self._closed:
                return
            self._arm_time.append(int(time_ns))
            self._arm_pose.append(pose)
            self._arm_gripper.append(float(gripper))
            self._arm_error.append(int(error_code))

    def add_commands(self, commands: Sequence[Command]) -> None:
        """Commands as they reached the arm; pass each command once (new ones only)."""
        if not commands:
            return
        poses = np.stack([np.asarray(c.pose, dtype=np.float64) for c in commands])
        actions = _to_actions(poses, np.array([c.gripper for c in commands], np.float64))
        times = np.array([c.time_ns for c in commands], dtype=np.int64)
        segments = np.array([c.segment for c in commands], dtype=np.int64)
        with self._lock:
            if not self._closed:
                self._command_times.append(times)
                self._command_actions.append(actions)
                self._command_segments.append(segments)

    def add_plan(self, plan: Plan, submitted: int | None = None) -> None:
        """One plan and, if known, how many of its waypoints were submitted to the servo loop.

        Plans whose frame count or action-image shape differs from the first plan's are kept
        in the metadata (with "stream_index": null) but not in the plan_* streams.
        """
        images = np.asarray(plan.action_images)
        if images.dtype != np.uint8:
            images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
        k = len(plan.waypoints)
        actions = np.asarray(plan.decoded.actions, dtype=np.float64)
        record = {
            "plan_id": int(plan.waypoints.plan_id),
            "source": plan.waypoints.source,
            "latency_s": float(plan.latency_s),
            "timings": json_safe(plan.timings),
            "submitted": None if submitted is None else int(submitted),
            "stream_index": None,
        }
        with self._lock:
            if self._closed:
                return
            if self._plan_shape is None and images.ndim == 5 and actions.shape == (k, 7):
                self._plan_shape = (k, images.shape)
                self._plan_images = self._writer.open_stream(
                    "plan_action_images", np.uint8, images.shape
                )
            if self._plan_shape == (k, images.shape) and actions.shape == (k, 7):
                record["stream_index"] = len(self._plan_rows)
                self._plan_images.append(images)
                self._plan_rows.append(
                    (
                        int(plan.observation_ns),
                        int(plan.ready_ns),
                        np.asarray(plan.waypoints.times_ns, dtype=np.int64),
                        actions,
                        np.asarray(plan.waypoints.confidence, dtype=np.float32),
                    )
                )
            self._plans.append(record)

    def add_event(self, event: SafetyEvent) -> None:
        """A safety event (clamp, hold, e-stop, ...) raised during the task."""
        record = {
            "time_ns": int(event.time_ns),
            "kind": str(event.kind),
            "severity": str(event.severity),
            "message": str(event.message),
        }
        with self._lock:
            if not self._closed:
                self._events.append(record)

    def commit(
        self,
        outcome: str,
        success: bool | None,
        reason: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write the streams and metadata and publish the episode; returns its directory.

        Returns None (and discards everything) when no frame was recorded. The episode's bool
        `success` is `bool(success)`; metadata "success" keeps None (= not judged). Bad
        arguments raise ValueError before anything changes, so the recording stays open.
        """
        if not isinstance(outcome, str) or not outcome:
            raise ValueError(f"outcome must be a non-empty str, got {outcome!r}")
        if success is not None and not isinstance(success, bool | np.bool_):
            raise ValueError(f"success must be a bool or None, got {success!r}")
        if reason is not None and not isinstance(reason, str):
            raise ValueError(f"reason must be a str or None, got {reason!r}")
        extra = _caller_metadata(metadata)
        with self._lock:
            if self._closed:
                raise RuntimeError("this TaskRecording was already committed or aborted")
            self._closed = True
            if self._writer.num_frames == 0:
                self._writer.abort()
                return None
            try:
                for name, array in self._streams().items():
                    self._writer.add_stream(name, array)
                return self._writer.commit(
                    bool(success),
                    {
                        **self.metadata,
                        **extra,
                        "recorded_by": RECORDED_BY,
                        "outcome": outcome,
                        "reason": reason,
                        "success": None if success is None else bool(success),
                        "plans": self._plans,
                        "plans_not_in_streams": len(self._plans) - len(self._plan_rows),
                        "frames_skipped": self._frames_skipped,
                        "safety_events": self._events,
                    },
                )
            except BaseException:
                self._writer.abort()
                raise

    def abort(self) -> None:
        """Discard the recording and its temporary directory (idempotent)."""
        with self._lock:
            self._closed = True
            self._writer.abort()

    def _streams(self) -> dict[str, np.ndarray]:
        arm_action = _to_actions(
            np.reshape(self._arm_pose, (-1, 4, 4)), np.array(self._arm_gripper, np.float64)
        )
        k = self._plan_shape[0] if self._plan_shape else 0
        rows = self._plan_rows

        def plan_stack(i: int, dtype: type, item: tuple[int, ...]) -> np.ndarray:
            if not rows:
                return np.zeros((0, *item), dtype=dtype)
            return np.stack([row[i] for row in rows]).astype(dtype)

        return {
            "arm_time_ns": np.array(self._arm_time, dtype=np.int64),
            "arm_action": arm_action.astype(np.float64),
            "arm_error": np.array(self._arm_error, dtype=np.int32),
            "command_time_ns": _concat(self._command_times, (), np.int64),
            "command_action": _concat(self._command_actions, (7,), np.float64),
            "command_segment": _concat(self._command_segments, (), np.int64),
            "plan_observation_ns": np.array([row[0] for row in rows], dtype=np.int64),
            "plan_ready_ns": np.array([row[1] for row in rows], dtype=np.int64),
            "plan_times_ns": plan_stack(2, np.int64, (k,)),
            "plan_actions": plan_stack(3, np.float64, (k, 7)),
            "plan_confidence": plan_stack(4, np.float32, (k,)),
            **({} if self._plan_images else {"plan_action_images": _NO_IMAGES}),
        }


_NO_IMAGES = np.zeros((0, 0, 0, 0, 0, 3), dtype=np.uint8)


def _to_actions(poses: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """[N, 4, 4] poses and [N] gripper -> [N, 7] actions; NaN rows where a pose is unknown."""
    out = np.full((len(poses), 7), np.nan)
    ok = np.isfinite(poses).all(axis=(1, 2)) & np.isfinite(gripper)
    ok[ok] = np.linalg.det(poses[ok, :3, :3]) > 0.5  # a rotation, not zeros or a reflection
    if ok.any():
        out[ok] = matrix_to_action(poses[ok], gripper[ok])
    return out


def _concat(chunks: list[np.ndarray], item: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.concatenate(chunks).astype(dtype) if chunks else np.zeros((0, *item), dtype)


def _caller_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's metadata as JSON; refuses the recorder's own keys (they would be lost)."""
    metadata = metadata_json(dict(metadata or {}))
    clash = sorted(RESERVED_METADATA & set(metadata))
    if clash:
        raise ValueError(f"metadata keys {clash} are written by the recorder: rename them")
    return metadata


def json_safe(value: Any) -> Any:
    """Plain JSON (plan timings, API answers): NumPy values as numbers and lists, NaN / inf
    as None (JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)
