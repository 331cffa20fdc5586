"""AUTOMATIC1111 / Forge entry point of LAFR (the webui imports every scripts/*.py of an extension).

Thin on purpose: the code lives in the lafr_webui package next to this folder (the webui puts the
extension root on sys.path while this file imports). Each import of this file, including the one
"Reload UI" triggers,
  * registers the "LAFR" face restorer (Settings > Face restoration), replacing a stale entry;
  * creates models/LAFR, where LAFR files go;
  * adds the Settings > LAFR section (file, detector, strength, colour correction);
  * exposes LafrExtras, which the webui finds in this module and lists in the Extras tab.
Only the LafrExtras class is imported by name here: the webui registers every
ScriptPostprocessing subclass it finds in this module's namespace.
"""

from modules import script_callbacks

import lafr_core  # noqa: F401 - imported while the extension root is on sys.path (see above)
from lafr_webui import restorer, settings
from lafr_webui.extras import LafrExtras  # noqa: F401 - found by the webui's script loader

restorer.register()
settings.lafr_folder().mkdir(parents=True, exist_ok=True)
script_callbacks.on_ui_settings(settings.add_settings)
