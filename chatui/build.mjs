// Build the chat page into src/peerage/webui/dist/chat/ (served by the web service at /chat/):
// our sources bundled with converse.js and JsSIP (both from npm, with the lock file) by esbuild, plus
// the assets converse.js loads at run time from its assets_path (/chat/): its stylesheet, emoji data,
// fonts, sounds, images, locale chunks, and libsignal's WebAssembly for OMEMO.
import { build } from 'esbuild';
import { cp, copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.env.CHAT_OUT || join(here, '..', 'src', 'peerage', 'webui', 'dist', 'chat');
const converse = join(here, 'node_modules', 'converse.js', 'dist');

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
// converse.js loads its locale chunks with import("./" + name) relative to its own module, which after
// bundling is /chat/app.js, next to the copied chunkjs/. esbuild would expand that pattern into every
// file of the folder; a call expression keeps it a plain run-time import.
const runtimeChunks = {
  name: 'converse-runtime-chunks',
  setup(b) {
    // libsignal (GPL) stays a companion file converse.js imports at run time, next to app.js.
    b.onResolve({ filter: /^\.\/libomemo\.esm\.min\.js$/ }, (args) => ({ path: args.path, external: true }));
    b.onLoad({ filter: /converse\.js[\\/]dist[\\/]converse\.js$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8');
      const pattern = 'import("./" + __webpack_require__.u(chunkId))';
      if (!source.includes(pattern)) throw new Error('converse.js: chunk loader not found; check the upgrade');
      return { contents: source.replace(pattern, 'import(((path) => path)("./" + __webpack_require__.u(chunkId)))'), loader: 'js' };
    });
  },
};
await build({
  plugins: [runtimeChunks],
  entryPoints: { app: join(here, 'src', 'main.js') },
  outdir: out,
  bundle: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  minify: process.env.CHAT_DEV !== '1',
  sourcemap: true,
  legalComments: 'linked',
  logLevel: 'error',
  entryNames: '[name]',
});
for (const name of ['converse.min.css', 'emoji.json', 'curve25519_compiled.wasm', 'libomemo.esm.min.js',
  'shared-connection-worker.js', 'manifest.json']) {
  await copyFile(join(converse, name), join(out, name));
}
for (const dir of ['images', 'sounds', 'webfonts', 'chunkjs']) {
  await cp(join(converse, dir), join(out, dir), { recursive: true, filter: (src) => !src.endsWith('.map') });
}
await copyFile(join(here, 'src', 'index.html'), join(out, 'index.html'));
await copyFile(join(here, 'src', 'chat.css'), join(out, 'chat.css'));
console.log(`chat built into ${out}`);
