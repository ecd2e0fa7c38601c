import preact from "@preact/preset-vite";
import { defineConfig } from "vite";

// The build is committed (dist/) and embedded in the server binary, so it must be reproducible:
// hashed file names, no source maps, nothing inlined as a data: URL or <script> (the page's
// Content-Security-Policy allows only 'self').
export default defineConfig({
  plugins: [preact()],
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    target: "es2022",
  },
});
