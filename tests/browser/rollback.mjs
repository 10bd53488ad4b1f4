// Clicks "Roll back" on a service whose previous color was scaled down (issue #25): the
// dashboard must offer to redeploy the version that was last live there, and do it when
// accepted. Prints every dialog's text, then "release: VERSION". Exits non-zero on a page
// error. Usage: node rollback.mjs ADMIN_URL TOKEN
import { chromium } from "playwright-core";

const [url, token] = process.argv.slice(2);
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
  page.on("dialog", (d) => { console.log("dialog: " + d.message().replace(/\n+/g, " ")); d.accept(); });
  await page.goto(`${url}/#token=${token}`);
  const card = page.locator('[data-service="chat"]');
  await card.locator('[data-testid="live"]').waitFor({ timeout: 10000 });
  await card.locator('button[data-act="rollback"]').click();
  // The redeploy starts a release: the service then has one in progress.
  const deadline = Date.now() + 10000;
  let svc = await api("/v1/services/chat");
  while (!svc.release && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    svc = await api("/v1/services/chat");
  }
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log("release: " + (svc.release ? svc.release.version : "none"));
} finally {
  await browser.close();
}
