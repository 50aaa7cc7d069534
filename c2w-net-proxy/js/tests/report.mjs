// The checks of a node test: `check(cond, what)` prints each result and exits on the first
// failure; `finish()` prints the "NAME: all N checks passed" line that `cargo xtask` looks for.
export function checker(name) {
  let checks = 0;
  return {
    check(cond, what) {
      if (!cond) {
        console.error(`${name}: FAILED: ${what}`);
        process.exit(1);
      }
      checks++;
      console.log(`${name}: ok: ${what}`);
    },
    finish() {
      console.log(`${name}: all ${checks} checks passed`);
    },
  };
}
