"""Synthetic national data sets for the demo, the benchmarks and the load test: cameras, owners and motion
events (:mod:`~dispatcher.synthetic.data`), sample request areas (:mod:`~dispatcher.synthetic.areas`) and partner
agencies (:mod:`~dispatcher.synthetic.agencies`)."""

from dispatcher.synthetic.agencies import generate_agencies, generated_registry
from dispatcher.synthetic.areas import SQ_MILE_KM2, km_per_degree, sample_areas, sample_areas_at
from dispatcher.synthetic.data import (
    GENERATOR_VERSION,
    REFERENCE_NOW,
    Places,
    SyntheticData,
    generate,
    read_parquet,
    today,
    us_places,
    write_parquet,
)

__all__ = [
    "GENERATOR_VERSION",
    "REFERENCE_NOW",
    "SQ_MILE_KM2",
    "Places",
    "SyntheticData",
    "generate",
    "generate_agencies",
    "generated_registry",
    "km_per_degree",
    "read_parquet",
    "sample_areas",
    "sample_areas_at",
    "today",
    "us_places",
    "write_parquet",
]
