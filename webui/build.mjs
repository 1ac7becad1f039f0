// Build the webmail into src/peerage/webui/dist/mail/ (served by the web service at /mail/).
import { build } from 'esbuild';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.env.WEBMAIL_OUT || join(here, '..', 'src', 'peerage', 'webui', 'dist', 'mail');

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: { app: join(here, 'src', 'main.jsx') },
  outdir: out,
  bundle: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  minify: process.env.WEBMAIL_DEV !== '1',
  sourcemap: true,
  jsx: 'automatic',
  jsxImportSource: 'preact',
  legalComments: 'linked',
  logLevel: 'warning',
  entryNames: '[name]',
});
await copyFile(join(here, 'src', 'index.html'), join(out, 'index.html'));
console.log(`webmail built into ${out}`);
