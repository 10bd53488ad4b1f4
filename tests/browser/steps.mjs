// Loads the dashboard during a progressive release's step and checks it shows each color's
// share and the step's row as the API gives them. Usage: node steps.mjs ADMIN_URL TOKEN
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
  await page.goto(`${url}/#token=${token}`);
  const card = page.locator('[data-service="chat"]');
  await card.locator('[data-testid="step-1"]').waitFor({ timeout: 10000 });
  const st = await api("/v1/services/chat");
  for (const c of ["blue", "green"]) {
    const w = (await card.locator(`[data-testid="weight-${c}"]`).textContent()).trim();
    if (w !== `${st.colors[c].weight}%`) fail(`${c} share shows "${w}", API says ${st.colors[c].weight}`);
  }
  const row = (await card.locator('[data-testid="step-1"]').textContent()).replace(/\s+/g, " ");
  const step = st.release.steps[0];
  if (!row.includes(`${step.step}/${step.of}`) || !row.includes(`${step.weight}%`) || !row.includes(step.result))
    fail(`step row "${row}" against ${JSON.stringify(step)}`);
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(`ok: green ${st.colors.green.weight}%, step ${step.step}/${step.of} ${step.result}`);
} finally {
  await browser.close();
}
