// Loads the workbench's WebAssembly (a file, not an inline script: the
// gateway's Content-Security-Policy allows only its own scripts).
import init from './lattice_workbench.js';
init({ module_or_path: new URL('lattice_workbench_bg.wasm', import.meta.url) });
