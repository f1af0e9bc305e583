// engines.js PACKAGE_JSON NPM_PATH: say whether the stack's Node.js meets engines.node.
// The stack has one Node.js; when it does not satisfy the range the build goes on with it and
// says so. The range is checked with npm's own semver module.
"use strict";
const fs = require("fs");
const path = require("path");
const pkg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const wanted = pkg.engines && pkg.engines.node;
const have = process.version;
const say = (s) => console.log("       " + s);
if (!wanted) {
  say(`No engines.node in package.json; using the stack's Node.js ${have}`);
  process.exit(0);
}
// npm bundles semver (nodesource, nodejs.org builds); Debian's npm uses the system one.
let semver = null;
for (const load of [
  () => require(path.join(path.resolve(fs.realpathSync(process.argv[3]), "..", ".."), "node_modules", "semver")),
  () => require("semver"),
]) {
  try {
    semver = load();
    break;
  } catch (e) {
    semver = null;
  }
}
let ok;
if (semver && semver.validRange(wanted)) {
  ok = semver.satisfies(have, wanted);
} else {
  const m = /^\D*(\d+)/.exec(String(wanted));
  ok = m ? Number(m[1]) === Number(have.slice(1).split(".")[0]) : false;
}
if (ok) {
  say(`engines.node is ${wanted}; the stack's Node.js ${have} satisfies it`);
} else {
  console.log(` !     engines.node asks for ${wanted}, which this stack does not have;`);
  say(`building with the stack's Node.js ${have}`);
}
