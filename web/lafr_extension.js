// ComfyUI-LAFR frontend extension: a before/after split view on "LAFR Restore Faces" and
// "Face Paste Back" (with each face's identity distance input -> output when the server measured
// one), and the detected faces drawn over the input on "LAFR Face Detect & Align".
// Plain ES module against the frontend's extension API (app.registerExtension); the drawing
// logic lives in lafr_view.js (tested with node --test). No build step, no network.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  clipForSplit, drawIdentity, drawOverlay, fitRect, identityFor, identityShapes, overlayShapes, splitFromPointer, splitPairs,
  viewPath,
} from "./lafr_view.js";

const SETTING_ID = "LAFR.ShowPreviews";
const SPLIT_NODES = new Set(["LAFRRestoreFaces", "LAFRFacePasteBack"]);
const OVERLAY_NODE = "LAFRFaceDetectAlign";
const WIDGET_NAME = "lafr_preview";
const MIN_HEIGHT = 256;

function previewsEnabled() {
  const value = app.ui?.settings?.getSettingValue?.(SETTING_ID);
  return value !== false;
}

function imageUrl(record) {
  return api.apiURL(viewPath(record));
}

/** The node's preview container (a DOM widget), created on first use. */
function previewContainer(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (!widget) {
    const element = document.createElement("div");
    element.className = "lafr-preview";
    Object.assign(element.style, { position: "relative", width: "100%", height: "100%", overflow: "hidden", background: "#111" });
    widget = node.addDOMWidget(WIDGET_NAME, "lafr_preview", element, { hideOnZoom: false, serialize: false });
    widget.serialize = false;
    widget.computeLayoutSize = () => ({ minHeight: MIN_HEIGHT, minWidth: MIN_HEIGHT });
    node.setSize([Math.max(node.size[0], 360), Math.max(node.size[1], node.computeSize()[1] + MIN_HEIGHT / 2)]);
  }
  widget.element.replaceChildren();
  return widget.element;
}

function layeredImage(src, extraStyle = {}) {
  const img = document.createElement("img");
  img.src = src;
  img.draggable = false;
  Object.assign(img.style, { position: "absolute", inset: "0", width: "100%", height: "100%", objectFit: "contain", ...extraStyle });
  return img;
}

/** Before (left of the handle) / after (right): drag or move the pointer to move the split. */
function showSplit(node, output) {
  const pairs = splitPairs(output);
  if (!pairs.length || !previewsEnabled()) return;
  const { before, after } = pairs[0];
  const box = previewContainer(node);
  const beforeImg = layeredImage(imageUrl(before));
  const afterImg = layeredImage(imageUrl(after));
  const handle = document.createElement("div");
  Object.assign(handle.style, { position: "absolute", top: "0", bottom: "0", width: "2px", background: "#fff", pointerEvents: "none" });
  const label = document.createElement("div");
  label.textContent = "before | after";
  Object.assign(label.style, { position: "absolute", top: "4px", left: "6px", color: "#fff", font: "12px sans-serif", textShadow: "0 0 3px #000" });
  box.append(beforeImg, afterImg, handle, label);
  const identity = identityFor(output, 0);
  const drawFaces = identity ? identityLayer(box, beforeImg, identity) : () => {};

  const place = (fraction) => {
    const rect = fitRect(beforeImg.naturalWidth, beforeImg.naturalHeight, box.clientWidth, box.clientHeight);
    // the clip is relative to the element box; the image is letterboxed inside it
    const edge = rect.x + fraction * rect.w;
    afterImg.style.clipPath = clipForSplit(box.clientWidth ? edge / box.clientWidth : fraction);
    handle.style.left = `${edge}px`;
  };
  let fraction = 0.5;
  const move = (event) => {
    const bounds = box.getBoundingClientRect();
    const rect = fitRect(beforeImg.naturalWidth, beforeImg.naturalHeight, bounds.width, bounds.height);
    fraction = splitFromPointer(event.clientX, bounds.left + rect.x, rect.w);
    place(fraction);
  };
  box.addEventListener("pointermove", move);
  box.addEventListener("pointerdown", move);
  beforeImg.addEventListener("load", () => {
    place(fraction);
    drawFaces();
  });
  new ResizeObserver(() => {
    place(fraction);
    drawFaces();
  }).observe(box);
  app.graph?.setDirtyCanvas(true, true);
}

/** A canvas filling the preview box; returns its redraw function, which sizes the canvas to the
 *  box, clears it and, once `img` has loaded, calls paint(ctx, width, height). */
function canvasLayer(box, img, paint, style = {}) {
  const canvas = document.createElement("canvas");
  Object.assign(canvas.style, { position: "absolute", inset: "0", width: "100%", height: "100%", ...style });
  box.append(canvas);
  return () => {
    const width = box.clientWidth || MIN_HEIGHT;
    const height = box.clientHeight || MIN_HEIGHT;
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    if (img.complete && img.naturalWidth) paint(ctx, width, height);
  };
}

/** Over the split: each face's box and "ID 0.21" (red when not the same person by the model's
 *  threshold), and the model's name; returns the redraw function (image loaded, node resized). */
function identityLayer(box, img, record) {
  return canvasLayer(box, img, (ctx, width, height) => {
    drawIdentity(ctx, identityShapes(record, fitRect(img.naturalWidth, img.naturalHeight, width, height)), height);
  }, { pointerEvents: "none" });
}

/** The input image with every detected face's box, score and five landmarks, and the count. */
function showOverlay(node, output) {
  const overlays = output?.lafr_overlay ?? [];
  if (!overlays.length || !previewsEnabled()) return;
  const overlay = overlays[0];
  const box = previewContainer(node);
  const img = new Image();
  const draw = canvasLayer(box, img, (ctx, width, height) => {
    const rect = fitRect(overlay.width, overlay.height, width, height);
    ctx.drawImage(img, rect.x, rect.y, rect.w, rect.h);
    drawOverlay(ctx, overlayShapes(overlay, rect));
  });
  img.onload = draw;
  img.src = imageUrl(overlay.image);
  new ResizeObserver(draw).observe(box);
  app.graph?.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "ComfyUI-LAFR.previews",
  settings: [
    {
      id: SETTING_ID,
      name: "LAFR: show before/after and detected-face previews on LAFR nodes",
      type: "boolean",
      defaultValue: true,
    },
  ],
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const show = SPLIT_NODES.has(nodeData.name) ? showSplit : nodeData.name === OVERLAY_NODE ? showOverlay : null;
    if (!show) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      try {
        show(this, output);
      } catch (error) {
        console.error("ComfyUI-LAFR preview:", error);
      }
    };
  },
});
