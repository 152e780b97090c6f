#!/usr/bin/env node
import './relaunch-tuned.js';
await import('../dist/cli/entry.js');
