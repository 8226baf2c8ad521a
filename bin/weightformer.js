#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript under dist/ (npm's pre-scripts build it).
require('../dist/src/cli/main.js').main(process.argv).catch((err) => {
  process.stderr.write(`weightformer: ${err && err.message ? err.message : String(err)}\n`);
  process.exit(1);
});
