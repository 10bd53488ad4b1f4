// Loads the dashboard in headless Chromium against a running router, checks that what it shows
// matches the admin API, clicks "Switch", and sees the page follow. Exits non-zero on any
// mismatch. Usage: node dashboard.mjs ADMIN_URL TOKEN SCREENSHOT_PREFIX
import { chromium } from "playwright-core";

const [url, token, shot] = process.argv.slice(2);
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };
const api = async (path) => (await fetch(url + path, { headers: { authorization: `Bearer ${token}` } })).json();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("dialog", (d) => d.accept());
  await page.goto(`${url}/#token=${token}`);
  const card = page.locator('[data-service="chat"]');
  await card.locator('[data-testid="live"]').waitFor({ timeout: 10000 });

  const before = await api("/v1/services/chat");
  const live = (await card.locator('[data-testid="live"]').textContent()).trim();
  if (!live.includes(`LIVE: ${before.live.toUpperCase()}`)) fail(`live shows "${live}", API says ${before.live}`);
  for (const c of ["blue", "green"]) {
    const v = (await card.locator(`[data-testid="version-${c}"]`).textContent()).trim();
    if (v !== before.colors[c].version) fail(`${c} version shows "${v}", API says ${before.colors[c].version}`);
  }
  const gen = (await card.locator('[data-testid="generation"]').textContent()).trim();
  if (gen !== String(before.generation)) fail(`generation shows ${gen}, API says ${before.generation}`);
  if (!page.url().endsWith("/")) fail("the token stays out of the address bar: " + page.url());
  await page.screenshot({ path: `${shot}-before.png`, fullPage: true });

  const other = before.live === "blue" ? "green" : "blue";
  await card.locator(`button[data-act="switch"][data-to="${other}"]`).click();
  await page.waitForFunction((o) => {
    const el = document.querySelector('[data-service="chat"] [data-testid="live"]');
    return el && el.textContent.includes("LIVE: " + o.toUpperCase());
  }, other, { timeout: 10000 });
  const after = await api("/v1/services/chat");
  if (after.live !== other || after.generation !== before.generation + 1) fail(`API after click: ${JSON.stringify(after)}`);
  await page.waitForFunction(() => document.querySelector('[data-testid="history"]') &&
    document.querySelector('[data-testid="history"]').textContent.includes("dashboard"), null, { timeout: 10000 });
  await page.screenshot({ path: `${shot}-after.png`, fullPage: true });
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(`ok: ${before.live} -> ${after.live}, generation ${after.generation}`);
} finally {
  await browser.close();
}
