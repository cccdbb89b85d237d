// Browser half of tests/e2e/test_console.py: drives the operator console in Debian's headless
// Chromium through playwright-core (no browser download: executablePath).
//
// Protocol with the pytest side (one line each, on stdout):
//   node  -> READY ...                 the live stream is connected with the office filter
//   pytest-> <case id>\n on stdin      a case it submitted by REST after READY
//   node  -> STREAM <case> ...         the case is in the live stream ... to closed
//            FILTER-OK ...             every line shown passes the office filter
//            TIMELINE <case> <types>   its timeline page, every step to closed
//            REFORMS licensed=.. ...   the pages of REFORM_LICENSED and REFORM_HELD (if set)
//            BUNDLE <id> members=..     the bundle's row opened into its members (if BUNDLE_ID),
//                                      and a member's case page linking back to the bundle
//            TABLES ...                SLA (and its clocks at risk), triage, dead letters, lag,
//                                      partner links
//            RESUMED ...               pause and resume the stream
//            SCREENSHOT <path>, DONE
// Anything wrong: `FAIL <why>` on stderr and exit code 1.
//
// Env: CONSOLE_URL (http://127.0.0.1:8000), STREAM_OFFICE (the office filter), CHROMIUM
// (/usr/bin/chromium), SCREENSHOT (.run/console.png), TIMEOUT_MS (180000); REFORM_LICENSED
// (a case whose material came from an e-licence) and REFORM_HELD (a case held at approval for
// a deferred material), both optional; BUNDLE_ID (a bundle submitted at intake), optional.

import { mkdtemp, rm, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const url = process.env.CONSOLE_URL ?? "http://127.0.0.1:8000";
const office = process.env.STREAM_OFFICE ?? "";
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const screenshot = resolve(process.env.SCREENSHOT ?? join(here, "..", "..", ".run", "console.png"));
const overall = Number(process.env.TIMEOUT_MS ?? 180_000);
const CLOSED = "gov.case.closed.v1";
const STEPS = [
  "gov.case.submitted.v1", "gov.case.routed.v1", "gov.case.accepted.v1", "gov.case.approved.v1",
  "gov.case.result_issued.v1", "gov.case.delivered.v1", CLOSED,
];
// What Debian's Chromium needs as root on a machine with a closed network.
const FLAGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

const say = (line) => process.stdout.write(`${line}\n`);
class Failure extends Error {}
const fail = (why) => { throw new Failure(why); };

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextStdinLine(timeoutMs) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure("no case id on stdin in time")), timeoutMs);
  });
  try {
    const { value, done } = await Promise.race([stdinLines.next(), timeout]);
    if (done) fail("stdin closed before a case id came");
    return value.trim();
  } finally {
    clearTimeout(timer);
  }
}

async function main(context, page) {
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") say(`PAGE-ERROR ${message.text()}`);
  });

  const t0 = Date.now();
  await page.goto(url, { waitUntil: "load" });
  const status = page.getByTestId("stream-status");
  await page.locator('[data-testid="stream-status"][data-state="live"]').waitFor({ timeout: 30_000 });
  const loaded = Date.now() - t0;

  // Set the live stream up: only cases taken at this office.
  if (office) {
    await page.getByTestId("filter-office").fill(office);
    await page.getByTestId("stream-apply").click();
    await page.locator('[data-testid="stream-status"][data-state="live"]').waitFor({ timeout: 30_000 });
    const text = await status.textContent();
    if (!text.includes(`office=${office}`)) fail(`the stream did not take the filter: ${text}`);
  }
  say(`READY loaded_ms=${loaded} status=${JSON.stringify(await status.textContent())}`);

  const caseId = await nextStdinLine(120_000);
  if (!caseId) fail("empty case id on stdin");
  const lines = page.locator(`tr[data-testid="stream-line"][data-case="${caseId}"]`);
  await lines.first().waitFor({ timeout: 60_000 });
  say(`STREAM ${caseId} first=${await lines.first().getAttribute("data-type")}`);
  await page
    .locator(`tr[data-testid="stream-line"][data-case="${caseId}"][data-type="${CLOSED}"]`)
    .waitFor({ timeout: 120_000 });
  const streamTypes = await lines.evaluateAll((rows) => rows.map((r) => r.dataset.type));
  say(`STREAM-CLOSED ${caseId} ${streamTypes.join(",")}`);

  if (office) {
    const offices = await page
      .locator('tr[data-testid="stream-line"]')
      .evaluateAll((rows) => rows.map((r) => r.dataset.offices.split(",")));
    const strays = offices.filter((list) => !list.includes(office));
    if (strays.length) fail(`${strays.length} stream lines outside office ${office}: ${JSON.stringify(strays)}`);
    say(`FILTER-OK office=${office} lines=${offices.length}`);
  }
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-stream.png") });

  // The case's timeline page, reached from its stream line.
  await lines.first().getByTestId("case-link").click();
  await page.getByTestId("case-input").waitFor({ state: "visible" });
  await page
    .locator(`[data-testid="timeline-row"][data-type="${CLOSED}"]`)
    .waitFor({ timeout: 60_000 });
  const timeline = await page
    .locator('[data-testid="timeline-row"]')
    .evaluateAll((rows) => rows.map((r) => r.dataset.type));
  const missing = STEPS.filter((step) => !timeline.includes(step));
  if (missing.length) fail(`timeline lacks ${missing.join(", ")}: ${timeline.join(", ")}`);
  const shown = await page.getByTestId("case-facts").textContent();
  if (!shown.includes(caseId) || !shown.includes("closed")) fail(`case facts: ${shown}`);
  say(`TIMELINE ${caseId} ${timeline.join(",")}`);
  await mkdir(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });

  // Fewer materials (减材料): a case with an e-licence reused, one held for a deferred material.
  const licensed = process.env.REFORM_LICENSED;
  const held = process.env.REFORM_HELD;
  if (licensed && held) {
    const openCase = (id) => page.evaluate((c) => { location.hash = `case=${encodeURIComponent(c)}`; }, id);
    await openCase(licensed);
    await page.getByTestId("case-licence").first().waitFor({ timeout: 30_000 });
    const licences = await page.getByTestId("case-licence").allTextContents();
    await openCase(held);
    await page.locator('[data-testid="case-status-value"]', { hasText: "approval_held" }).waitFor({ timeout: 30_000 });
    await page.getByTestId("case-held-for").waitFor();
    const deferrals = await page.getByTestId("case-deferral").allTextContents();
    const heldFor = await page.getByTestId("case-held-for").textContent();
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-held.png"), fullPage: true });
    say(`REFORMS licensed=${JSON.stringify(licences)} deferred=${JSON.stringify(deferrals)} held_for=${JSON.stringify(heldFor)}`);
  }

  // A bundle (一件事) is one row that opens into its members; a member's page links back.
  const bundleId = process.env.BUNDLE_ID;
  if (bundleId) {
    await page.evaluate((b) => { location.hash = `bundle=${encodeURIComponent(b)}`; }, bundleId);
    const row = page.locator(`tr[data-testid="bundle-row"][data-bundle="${bundleId}"][data-open="true"]`);
    await row.waitFor({ timeout: 30_000 });
    const members = page.locator('tr[data-testid="bundle-member"]');
    await members.first().waitFor({ timeout: 30_000 });
    const shown = await members.evaluateAll((rows) => rows.map((r) => `${r.dataset.case}:${r.dataset.status}`));
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-bundle.png"), fullPage: true });
    await row.click();  // closes it again
    await page.locator(`tr[data-testid="bundle-row"][data-bundle="${bundleId}"][data-open="false"]`).waitFor();
    if (await members.count()) fail("a closed bundle row still shows its members");
    const member = shown[0].split(":")[0];
    await page.evaluate((c) => { location.hash = `case=${encodeURIComponent(c)}`; }, member);
    const back = page.locator('[data-testid="case-bundle"] [data-testid="bundle-link"]');
    await back.waitFor({ timeout: 30_000 });
    say(`BUNDLE ${bundleId} members=${shown.join(",")} back=${await back.textContent()}`);
  }

  // The other views render (or say plainly what is unavailable).
  const tables = {};
  for (const [tab, row, message] of [
    ["sla", "sla-row", "sla-message"],
    ["triage", "triage-row", "triage-message"],
    ["dlq", "dlq-row", "dlq-message"],
    ["lag", "lag-row", "lag-message"],
    ["links", "link-row", "links-message"],
  ]) {
    await page.getByTestId(`tab-${tab}`).click();
    const rows = page.getByTestId(row);
    const note = page.getByTestId(message);
    await page.waitForFunction(
      ([r, m]) => document.querySelectorAll(`[data-testid="${r}"]`).length > 0
        || (document.querySelector(`[data-testid="${m}"]`)?.textContent ?? "") !== "",
      [row, message],
      { timeout: 20_000 },
    );
    await page.screenshot({ path: screenshot.replace(/\.png$/, `-${tab}.png`) });
    tables[tab] = `${await rows.count()}rows${(await note.textContent()) ? ":" + JSON.stringify(await note.textContent()) : ""}`;
  }
  tables.dlq_count = await page.getByTestId("dlq-count").textContent();
  await page.getByTestId("tab-sla").click();
  await page.waitForFunction(
    () => document.querySelectorAll('[data-testid="clock-row"]').length > 0
      || (document.querySelector('[data-testid="clocks-message"]')?.textContent ?? "") !== "",
    null,
    { timeout: 20_000 },
  );
  tables.clocks = `${await page.getByTestId("clock-row").count()}rows`;
  await page.getByTestId("tab-lag").click();
  tables.lag_total = await page.getByTestId("lag-total").textContent();
  say(`TABLES ${Object.entries(tables).map(([k, v]) => `${k}=${v}`).join(" ")}`);

  // Pause stops the stream; Resume catches up from where it stopped.
  await page.getByTestId("tab-stream").click();
  await page.getByTestId("stream-pause").click();
  await page.locator('[data-testid="stream-status"][data-state="paused"]').waitFor();
  await page.getByTestId("stream-pause").click();
  await page.locator('[data-testid="stream-status"][data-state="live"]').waitFor();
  say(`RESUMED ${JSON.stringify(await status.textContent())}`);

  if (pageErrors.length) fail(`errors in the page: ${pageErrors.join(" | ")}`);
  say(`SCREENSHOT ${screenshot}`);
}

async function run() {
  const userDataDir = await mkdtemp(join(tmpdir(), "tongban-chromium-"));
  let context;
  const guard = setTimeout(() => {
    process.stderr.write(`FAIL no result after ${overall} ms\n`);
    process.exit(2);
  }, overall);
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args: FLAGS,
      viewport: { width: 1400, height: 900 },
      timezoneId: "Asia/Shanghai",
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(30_000);
    await main(context, page);
    say("DONE");
    return 0;
  } catch (error) {
    process.stderr.write(`FAIL ${error instanceof Failure ? error.message : error.stack ?? error}\n`);
    return 1;
  } finally {
    clearTimeout(guard);
    if (context) await context.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true });
  }
}

process.exit(await run());
