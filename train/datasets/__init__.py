"""Dataset readers (one module per format), each returning an `Inventory` of `Record`s, and a summary.

No torch here: the stdlib and Pillow (EXIF dates, XMP packets), so inventories can be built and checked anywhere.
"""

from train.datasets.camtrap_dp import read_camtrap_dp, read_camtrap_dp_boxes
from train.datasets.capture_time import capture_time_warnings, time_source_counts
from train.datasets.coco import read_coco_camera_traps
from train.datasets.csv_table import read_csv
from train.datasets.folders import SPOTID_FILENAME, read_folders
from train.datasets.inventory import DatasetError, Inventory, Problem
from train.datasets.megadetector import read_megadetector
from train.datasets.summary import Summary, format_summary, save_summary, summarise
from train.datasets.voc import read_voc
from train.datasets.xmp import read_xmp
from train.datasets.yolo import read_class_names, read_yolo

__all__ = [
    "DatasetError", "Inventory", "Problem", "SPOTID_FILENAME", "Summary", "capture_time_warnings", "format_summary",
    "read_camtrap_dp", "read_camtrap_dp_boxes", "read_class_names", "read_coco_camera_traps", "read_csv",
    "read_folders", "read_megadetector", "read_voc", "read_xmp", "read_yolo", "save_summary", "summarise",
    "time_source_counts",
]
