"""Modality embedders (raw sample -> B×C′×H×W map for the UniRepLKNet backbone, paper §3.3) and task
heads. Registered by name (``"module:Class"``, imported on use) so checkpoints can rebuild them."""

from __future__ import annotations

EMBEDDERS: dict[str, str] = {
    "audio_fbank": "unireplknet.modalities.audio:FbankEmbedder",
    "corrformer": "unireplknet.modalities.timeseries:CorrformerEmbedder",
    "pointcloud_projector": "unireplknet.modalities.pointcloud:PointCloudProjector",
    "video_tiler": "unireplknet.modalities.video:FrameTiler",
}
HEADS: dict[str, str] = {
    "forecast": "unireplknet.modalities.timeseries:ForecastHead",
}
