// Pure drawing logic of the LAFR frontend extension: no DOM, no ComfyUI imports, so it runs
// under `node --test` (tests/web/). lafr_extension.js wires these into ComfyUI nodes.

/** Largest rectangle of the source's aspect ratio that fits in the box, centred ("contain"). */
export function fitRect(srcWidth, srcHeight, boxWidth, boxHeight) {
  if (!(srcWidth > 0 && srcHeight > 0 && boxWidth > 0 && boxHeight > 0)) {
    return { x: 0, y: 0, w: 0, h: 0 };
  }
  const scale = Math.min(boxWidth / srcWidth, boxHeight / srcHeight);
  const w = srcWidth * scale;
  const h = srcHeight * scale;
  return { x: (boxWidth - w) / 2, y: (boxHeight - h) / 2, w, h };
}

/** Clamp to [0, 1]; NaN (no pointer yet) becomes the middle. */
export function clampFraction(fraction) {
  if (Number.isNaN(fraction)) return 0.5;
  return Math.min(1, Math.max(0, fraction));
}

/** Split position (0 = all "after", 1 = all "before") from a pointer x over the shown image. */
export function splitFromPointer(pointerX, imageLeft, imageWidth) {
  if (!(imageWidth > 0)) return 0.5;
  return clampFraction((pointerX - imageLeft) / imageWidth);
}

/** CSS clip-path for the "after" image laid over the "before": before shows left of the split. */
export function clipForSplit(fraction) {
  const left = (clampFraction(fraction) * 100).toFixed(2);
  return `inset(0 0 0 ${left}%)`;
}

/** The /view path of an image record the server sent ({filename, subfolder, type}). */
export function viewPath(record) {
  const params = new URLSearchParams({
    filename: record.filename,
    type: record.type ?? "temp",
    subfolder: record.subfolder ?? "",
  });
  return `/view?${params.toString()}`;
}

/** Pairs of before/after records from a node's UI output; empty when there is nothing to show. */
export function splitPairs(output) {
  const before = output?.lafr_before ?? [];
  const after = output?.lafr_after ?? [];
  const n = Math.min(before.length, after.length);
  return Array.from({ length: n }, (_, i) => ({ before: before[i], after: after[i] }));
}

/** Faces of one overlay record mapped from image pixels into the drawn rectangle. */
export function overlayShapes(overlay, rect) {
  const scale = overlay.width > 0 ? rect.w / overlay.width : 0;
  const at = (x, y) => ({ x: rect.x + x * scale, y: rect.y + y * scale });
  const faces = (overlay.faces ?? []).map((face, index) => {
    const [x1, y1, x2, y2] = face.box;
    const topLeft = at(x1, y1);
    return {
      index,
      box: { x: topLeft.x, y: topLeft.y, w: (x2 - x1) * scale, h: (y2 - y1) * scale },
      label: `${index}: ${Number(face.score).toFixed(2)}`,
      landmarks: face.landmarks.map(([x, y]) => at(x, y)),
    };
  });
  return { faces, caption: faceCountCaption(faces.length, overlay.skipped_small ?? 0) };
}

/** "2 faces", "1 face", "no face found (3 too small)" */
export function faceCountCaption(count, skippedSmall = 0) {
  const main = count === 0 ? "no face found" : `${count} face${count === 1 ? "" : "s"}`;
  return skippedSmall > 0 ? `${main} (${skippedSmall} too small)` : main;
}

export const LANDMARK_COLOURS = ["#ff4040", "#40a0ff", "#40ff40", "#ffc800", "#ff00ff"];
export const BOX_COLOUR = "#00ffff";

/** Draw overlayShapes() output on a 2D context (any object with the canvas 2D methods). */
export function drawOverlay(ctx, shapes, { lineWidth = 2, radius = 3, font = "12px sans-serif" } = {}) {
  ctx.lineWidth = lineWidth;
  ctx.font = font;
  for (const face of shapes.faces) {
    ctx.strokeStyle = BOX_COLOUR;
    ctx.strokeRect(face.box.x, face.box.y, face.box.w, face.box.h);
    ctx.fillStyle = BOX_COLOUR;
    ctx.fillText(face.label, face.box.x + 2, Math.max(12, face.box.y - 4));
    face.landmarks.forEach((point, i) => {
      ctx.fillStyle = LANDMARK_COLOURS[i % LANDMARK_COLOURS.length];
      ctx.beginPath();
      ctx.arc(point.x, point.y, radius, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
  ctx.fillStyle = "#ffffff";
  ctx.fillText(shapes.caption, 6, 16);
}

export const ID_COLOUR = "#ffffff";
export const ID_FAR_COLOUR = "#ff4040";

/** The identity record of before/after pair `index` (the server's lafr_identity: one per pair,
 *  sent only when an identity model is installed), or null when there is nothing to show. */
export function identityFor(output, index = 0) {
  const record = output?.lafr_identity?.[index];
  return record && (record.faces ?? []).length ? record : null;
}

/** "ID 0.21" (dlib) or "ID 23.4" (ArcFace degrees: no need for hundredths). */
export function identityLabel(distance) {
  const d = Number(distance);
  return `ID ${d.toFixed(Math.abs(d) >= 10 ? 1 : 2)}`;
}

/** "ID input->output: dlib ResNet descriptor, same person < 0.6" */
export function identityCaption(record) {
  return `ID input->output: ${record.model}${record.legend ? `, ${record.legend}` : ""}`;
}

/** Faces of an identity record mapped from image pixels into the drawn rectangle, each labelled
 *  with its distance and flagged `far` (drawn in ID_FAR_COLOUR) when it is not under the
 *  model's same-person threshold; a model without a threshold flags nothing. */
export function identityShapes(record, rect) {
  const scale = record.width > 0 ? rect.w / record.width : 0;
  const threshold = typeof record.threshold === "number" ? record.threshold : null;
  const faces = (record.faces ?? []).filter((face) => Number.isFinite(face.distance)).map((face) => {
    const [x1, y1, x2, y2] = face.box;
    const far = threshold !== null && face.distance >= threshold;
    return {
      index: face.index,
      box: { x: rect.x + x1 * scale, y: rect.y + y1 * scale, w: (x2 - x1) * scale, h: (y2 - y1) * scale },
      label: identityLabel(face.distance),
      far,
      colour: far ? ID_FAR_COLOUR : ID_COLOUR,
    };
  });
  return { faces, caption: identityCaption(record) };
}

/** Draw identityShapes() output: a box and its "ID 0.21" under each face, the caption at the bottom. */
export function drawIdentity(ctx, shapes, height, { lineWidth = 1.5, font = "12px sans-serif" } = {}) {
  ctx.lineWidth = lineWidth;
  ctx.font = font;
  ctx.shadowColor = "#000000";
  ctx.shadowBlur = 3;
  for (const face of shapes.faces) {
    ctx.strokeStyle = face.colour;
    ctx.strokeRect(face.box.x, face.box.y, face.box.w, face.box.h);
    ctx.fillStyle = face.colour;
    ctx.fillText(face.label, face.box.x + 2, Math.min(height - 4, face.box.y + face.box.h + 14));
  }
  ctx.fillStyle = ID_COLOUR;
  ctx.fillText(shapes.caption, 6, height - 6);
}
