"""ComfyUI entry point of ComfyUI-LAFR (custom_nodes/ComfyUI-LAFR).

ComfyUI imports this folder as a package: NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS and
WEB_DIRECTORY are read from here. Outside ComfyUI (pip install, pytest, A1111) this file is
not imported: lafr_core is the library.
"""

try:
    import folder_paths  # noqa: F401  (present only inside ComfyUI)
except ImportError:  # imported outside ComfyUI (e.g. by tooling): expose the nodes, register nothing
    _IN_COMFYUI = False
else:
    _IN_COMFYUI = True

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_lafr_folder

if _IN_COMFYUI:
    register_lafr_folder()

import os as _os

# The frontend extension (before/after view, face overlay) lives in web/.
WEB_DIRECTORY = "./web" if _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "web")) else None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
