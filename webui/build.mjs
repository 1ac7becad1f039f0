// Build the webmail into src/peerage/webui/dist/mail/ (served by the web service at /mail/).
//
// What reaches the inbox first is kept small: the reader's HTML cleaning and the compose editor (with
// DOMPurify) are separate chunks, loaded after the inbox is drawn. Every file but index.html carries a
// content hash in its name, so the server can let browsers keep them (peerage.web.spa) and an upgrade
// never mixes old and new chunks. index.html names the hashed files, preloads the entry's static imports
// and the two JSON resources the app asks for first, and each file gets .gz and .br copies that the
// server sends to browsers that take them.
import { build } from 'esbuild';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.env.WEBMAIL_OUT || join(here, '..', 'src', 'peerage', 'webui', 'dist', 'mail');

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
const result = await build({
  entryPoints: { app: join(here, 'src', 'main.jsx') },
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  minify: process.env.WEBMAIL_DEV !== '1',
  sourcemap: true,
  jsx: 'automatic',
  jsxImportSource: 'preact',
  legalComments: 'linked',
  logLevel: 'warning',
  entryNames: '[name]-[hash]',
  chunkNames: 'chunk-[hash]',
  assetNames: '[name]-[hash]',
  metafile: true,
  absWorkingDir: here,
});

const outputs = result.metafile.outputs;
const name = (path) => basename(path);
const entry = Object.keys(outputs).find((p) => outputs[p].entryPoint && p.endsWith('.js'));
const css = outputs[entry].cssBundle;
const preload = outputs[entry].imports.filter((i) => i.kind === 'import-statement').map((i) => name(i.path));

let html = await readFile(join(here, 'src', 'index.html'), 'utf8');
html = html
  .replace('./app.css', `./${name(css)}`)
  .replace('./app.js', `./${name(entry)}`)
  .replace('<!-- modulepreload -->', preload.map((p) => `<link rel="modulepreload" href="./${p}">`).join('\n'));
await writeFile(join(out, 'index.html'), html);

// Precompressed copies (the server picks one by Accept-Encoding); source maps and tiny files are left.
for (const path of [...Object.keys(outputs), join(out, 'index.html')]) {
  if (path.endsWith('.map')) continue;
  const file = path.startsWith('/') ? path : join(here, path);
  const data = await readFile(file);
  if (data.length < 1024) continue;
  await writeFile(`${file}.gz`, gzipSync(data, { level: 9 }));
  await writeFile(`${file}.br`, brotliCompressSync(data, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
}
const sizes = Object.entries(outputs).filter(([p]) => !p.endsWith('.map')).map(([p, o]) => `${relative(out, join(here, p))} ${o.bytes}`);
console.log(`webmail built into ${out}: ${sizes.join(', ')}`);
