#!/usr/bin/env node
// One Messages call with the official TypeScript SDK, as an application makes it, then one
// JSON line on stdout saying what the application got: the text, the event types, the
// error. Run by tests/realclients.py (run_ts_client); exit status 0 on an answer, 1 on an
// error, 2 on bad arguments.
//
//   node ts_client.cjs [--base-url URL] --mode stream|create-stream|create
//                      [--max-retries N] [--timeout-ms N] [--model M] [--prompt TEXT]
//
// The SDK is loaded from SDKGUARD_CLIENTS_NODE_MODULES (the install under .cache), so this
// script needs no node_modules beside it. The API key is the dummy one in ANTHROPIC_API_KEY;
// nothing here prints a key or a header value.
'use strict';

const path = require('node:path');
const { createRequire } = require('node:module');

function parseArgs(argv) {
  const options = {
    mode: 'stream',
    maxRetries: 2,
    timeoutMs: 10000,
    model: 'claude-sonnet-4-5',
    prompt: 'say hi',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${name} needs a value`);
    if (name === '--base-url') options.baseURL = value;
    else if (name === '--mode') options.mode = value;
    else if (name === '--max-retries') options.maxRetries = Number(value);
    else if (name === '--timeout-ms') options.timeoutMs = Number(value);
    else if (name === '--model') options.model = value;
    else if (name === '--prompt') options.prompt = value;
    else throw new Error(`unknown argument ${name}`);
  }
  if (!['stream', 'create-stream', 'create'].includes(options.mode)) {
    throw new Error(`unknown mode ${options.mode}`);
  }
  return options;
}

// The error as the application sees it: its class, message, HTTP status and API error type,
// and the chain of causes (undici's TypeError: terminated carries the socket error).
function describeError(err) {
  const causes = [];
  for (let c = err && err.cause, depth = 0; c && depth < 5; c = c.cause, depth++) {
    causes.push({ name: c.constructor ? c.constructor.name : String(c), message: String(c.message ?? c), code: c.code ?? null });
  }
  const body = err && err.error;
  return {
    name: err && err.constructor ? err.constructor.name : typeof err,
    message: String(err && err.message !== undefined ? err.message : err),
    status: err && err.status !== undefined ? err.status : null,
    api_error_type: body && body.error && body.error.type ? body.error.type : null,
    causes,
  };
}

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`ts_client: ${err.message}\n`);
    return 2;
  }
  const modules = process.env.SDKGUARD_CLIENTS_NODE_MODULES;
  const load = createRequire(path.join(modules || __dirname, 'noop.js'));
  const sdk = load('@anthropic-ai/sdk');
  const Anthropic = sdk.Anthropic || sdk.default;
  // Without --base-url, the SDK reads ANTHROPIC_BASE_URL (set by a wrapper: a proxy command).
  if (!options.baseURL && !process.env.ANTHROPIC_BASE_URL) {
    process.stderr.write('ts_client: neither --base-url nor ANTHROPIC_BASE_URL\n');
    return 2;
  }
  const client = new Anthropic({
    ...(options.baseURL ? { baseURL: options.baseURL } : {}),
    apiKey: process.env.ANTHROPIC_API_KEY || 'sk-dummy',
    maxRetries: options.maxRetries,
    timeout: options.timeoutMs,
  });
  const args = {
    model: options.model,
    max_tokens: 256,
    messages: [{ role: 'user', content: options.prompt }],
  };

  const report = { mode: options.mode, sdk_version: JSON.parse(require('node:fs').readFileSync(path.join(path.dirname(load.resolve('@anthropic-ai/sdk')), 'package.json'), 'utf8')).version, text: '', events: [] };
  try {
    if (options.mode === 'stream') {
      const stream = client.messages.stream(args);
      stream.on('streamEvent', (event) => report.events.push(event.type));
      stream.on('text', (delta) => {
        report.text += delta;
      });
      const message = await stream.finalMessage();
      report.stop_reason = message.stop_reason;
      report.final_text = message.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
    } else if (options.mode === 'create-stream') {
      const stream = await client.messages.create({ ...args, stream: true });
      for await (const event of stream) {
        report.events.push(event.type);
        if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') {
          report.text += event.delta.text;
        }
        if (event.type === 'message_delta') report.stop_reason = event.delta.stop_reason;
      }
    } else {
      const message = await client.messages.create(args);
      report.text = message.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
      report.stop_reason = message.stop_reason;
    }
    report.ok = true;
  } catch (err) {
    report.ok = false;
    report.error = describeError(err);
  }
  process.stdout.write(JSON.stringify(report) + '\n');
  return report.ok ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`ts_client: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 3;
  },
);
