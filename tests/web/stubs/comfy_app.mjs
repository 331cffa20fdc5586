// Stand-in for ComfyUI's frontend modules (scripts/app.js and scripts/api.js) under node --test:
// records the extensions registered and answers the two calls the extension makes.
export const registered = [];
export const settings = { showPreviews: true };
export const app = {
  registerExtension: (extension) => registered.push(extension),
  ui: { settings: { getSettingValue: (id) => (id === "LAFR.ShowPreviews" ? settings.showPreviews : undefined) } },
  graph: { setDirtyCanvas() {} },
};
export const api = { apiURL: (path) => `/api${path}` };
