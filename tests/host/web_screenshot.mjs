// Headless Chromium check of the LAFR frontend extension in a running ComfyUI:
//   node tests/host/web_screenshot.mjs URL WORKFLOW.json OUT.png [EXPECTED_PREVIEWS]
// Loads the workflow in the real frontend, queues it, waits for the LAFR preview widget to show
// a loaded image, and takes a screenshot. Needs playwright-core (PLAYWRIGHT_NODE_MODULES) and /usr/bin/chromium.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

// playwright-core is not a dependency of the pack: take it from PLAYWRIGHT_NODE_MODULES.
const require = createRequire(`${process.env.PLAYWRIGHT_NODE_MODULES ?? "."}/`);
const { chromium } = require("playwright-core");

const [url, workflowPath, outPath, expectedArg] = process.argv.slice(2);
const expected = Number(expectedArg ?? 1);
const workflow = JSON.parse(readFileSync(workflowPath, "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
  page.on("console", (msg) => { if (msg.type() === "error") console.error("page:", msg.text()); });
  await page.goto(url, { waitUntil: "domcontentloaded" });
  // the graph exists before the node definitions are registered: wait for ours
  await page.waitForFunction(() => window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types?.LAFRRestoreFaces,
    null, { timeout: 120000 });
  await page.evaluate(async (wf) => {
    const app = window.comfyAPI.app.app;
    await app.loadGraphData(wf);
    await app.queuePrompt(0, 1);
  }, workflow);
  await page.waitForFunction((n) => {
    const imgs = [...document.querySelectorAll(".lafr-preview img, .lafr-preview canvas")];
    return document.querySelectorAll(".lafr-preview").length >= n
      && imgs.every((el) => el.tagName === "CANVAS" || (el.complete && el.naturalWidth > 0));
  }, expected, { timeout: 900000, polling: 1000 });
  await page.keyboard.press("Escape"); // the first-run template browser, if it opened
  const split = await page.$(".lafr-preview img");
  if (split) { // drag-free hover: move the split left of centre, where the face is
    const b = await split.boundingBox();
    await page.mouse.move(b.x + b.width * 0.45, b.y + b.height / 2);
  }
  await page.waitForTimeout(1500);
  const count = await page.evaluate(() => document.querySelectorAll(".lafr-preview").length);
  await page.screenshot({ path: outPath });
  console.log(JSON.stringify({ previews: count }));
} finally {
  await browser.close();
}
