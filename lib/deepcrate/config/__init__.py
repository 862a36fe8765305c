"""Settings: read from the defaults, YAML overlays and ``--set`` (:mod:`.loading`), typed and checked
(:mod:`.sections`). Imports only ``errors``; every other package reads its settings from a :class:`Settings`.
"""
from deepcrate.config.loading import default_config, resolve_settings, settings_from_mapping, settings_to_yaml
from deepcrate.config.sections import (
    AcquireSettings,
    DecodeLimits,
    EmbedSettings,
    EvaluateSettings,
    FeaturesSettings,
    IndexSettings,
    IngestSettings,
    Settings,
    SparkSettings,
    SpectrogramSection,
    SplitSettings,
    TrainSettings,
    to_mapping,
)

__all__ = ["AcquireSettings", "DecodeLimits", "EmbedSettings", "EvaluateSettings", "FeaturesSettings",
           "IndexSettings", "IngestSettings", "Settings", "SparkSettings", "SpectrogramSection", "SplitSettings", "TrainSettings",
           "default_config", "resolve_settings", "settings_from_mapping", "settings_to_yaml", "to_mapping"]
