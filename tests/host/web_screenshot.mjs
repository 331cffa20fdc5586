// Headless Chromium check of the LAFR frontend extension in a running ComfyUI:
//   node tests/host/web_screenshot.mjs URL WORKFLOW.json OUT.png
// Loads the workflow in the real frontend, queues it, waits for the LAFR preview widget to show
// a loaded image, and takes a screenshot. Needs playwright-core (PLAYWRIGHT_NODE_MODULES) and /usr/bin/chromium.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

// playwright-core is not a dependency of the pack: take it from PLAYWRIGHT_NODE_MODULES.
const require = createRequire(`${process.env.PLAYWRIGHT_NODE_MODULES ?? "."}/`);
const { chromium } = require("playwright-core");

const [url, workflowPath, outPath] = process.argv.slice(2);
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
  await page.waitForFunction(() => {
    const imgs = [...document.querySelectorAll(".lafr-preview img, .lafr-preview canvas")];
    return imgs.length > 0 && imgs.every((el) => el.tagName === "CANVAS" || (el.complete && el.naturalWidth > 0));
  }, null, { timeout: 600000, polling: 1000 });
  await page.waitForTimeout(1500);
  const count = await page.evaluate(() => document.querySelectorAll(".lafr-preview").length);
  await page.screenshot({ path: outPath });
  console.log(JSON.stringify({ previews: count }));
} finally {
  await browser.close();
}
