import preact from "@preact/preset-vite";
import { defineConfig } from "vite";

// The gateway serves dist/ at / (gateway/console.py): hashed files under
// /assets/, no inline script or style (the Content-Security-Policy allows
// 'self' only), and nothing loaded from another origin.
export default defineConfig({
  plugins: [preact()],
  build: {
    outDir: "dist",
    assetsDir: "assets",
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
});
