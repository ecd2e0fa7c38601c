/**
 * Measures how long the dashboard takes to show the first page of connections for an organization
 * with many of them (default 10,000): from opening the page (signed in) to the first row on screen,
 * in Chromium, against the real server on SQLite. A measurement, not a test: it prints numbers.
 *
 *   CONNECTIONS_BIN=../target/release/connections node --import tsx bench/first_page.ts [count]
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AdminService } from "../src/gen/connections/v1/admin_service_pb.js";
import { DataType } from "../src/gen/connections/v1/resources_pb.js";
import { context, launch, Server, signIn } from "../test/harness.js";

const count = Number(process.argv[2] ?? 10_000);
const ADMIN_TOKEN = "first-page-measurement-0123456789abcdef";

/** Runs `task(i)` for i in 0..n, `width` at a time. */
async function inParallel(n: number, width: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) await task(next++);
    }),
  );
}

const server = await Server.start({ CONNECTIONS_ADMIN_TOKEN: ADMIN_TOKEN });
try {
  const source = server.newOrg("Measured Source");
  const admin = createClient(
    AdminService,
    createGrpcWebTransport({
      baseUrl: server.baseUrl,
      interceptors: [
        (next) => async (req) => {
          req.header.set("authorization", `Bearer ${ADMIN_TOKEN}`);
          return await next(req);
        },
      ],
    }),
  );
  const connections = server.connections(source);
  const seeding = Date.now();
  await inParallel(count, 16, async (i) => {
    const { organization } = await admin.createOrganization({ displayName: `Destination ${i}` });
    await connections.createConnection({
      destinationOrganizationId: organization!.id,
      dataTypes: [DataType.INQUIRY],
    });
  });
  console.log(`seeded ${count} connections in ${((Date.now() - seeding) / 1000).toFixed(1)} s`);

  const browser = await launch();
  const { context: ctx } = await context(browser, server);
  const page = await ctx.newPage();
  await signIn(page, source);
  const times: number[] = [];
  for (let run = 0; run < 7; run++) {
    const started = Date.now();
    await page.goto("/#/");
    await page.reload();
    await page.locator("li.connection").first().waitFor();
    times.push(Date.now() - started);
  }
  const rows = await page.locator("li.connection").count();
  times.sort((a, b) => a - b);
  console.log(
    `first page (${rows} rows of ${count}): median ${times[3]} ms, min ${times[0]} ms, max ${times[6]} ms`,
  );
  await browser.close();
} finally {
  await server.stop();
}
