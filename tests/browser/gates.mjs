// The gate readings of a release that is baking, as the dashboard shows them: an external
// gate's query (or scraped metric) appears under its name, with its value and result. Prints
// "gate: NAME | QUERY | VALUE | RESULT" for each such row once one has a value. Exits non-zero
// on a page error or when none shows within 20 s. Usage: node gates.mjs ADMIN_URL TOKEN
import { chromium } from "playwright-core";

const [url, token] = process.argv.slice(2);
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${url}/#token=${token}`);
  const rows = page.locator('[data-testid="release"] tr:has(code.query)');
  const deadline = Date.now() + 20000;
  let lines = [];
  while (Date.now() < deadline) {
    lines = [];
    for (const row of await rows.all()) {
      const cells = await row.locator("td").allInnerTexts();
      const query = await row.locator("code.query").innerText();
      const name = cells[0].replace(query, "").trim();
      lines.push(`gate: ${name} | ${query} | ${cells[1]} | ${cells[3]}`);
    }
    if (lines.some((l) => !l.includes("| — |"))) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  if (errors.length) fail("page errors: " + errors.join("; "));
  if (!lines.length) fail("no external gate row on the dashboard");
  lines.forEach((l) => console.log(l));
} finally {
  await browser.close();
}
