// The sharemesh tenant journey from Node, with @grpc/grpc-js and @grpc/proto-loader:
// create a share, let a host mount it, grow it, snapshot it, see a rich error, and
// clean up. Every mutation carries a request_id, so the shipped service config may
// retry it (a retry with the same id returns the same Operation, never acts twice).
//
//   SHAREMESH_ENDPOINT=127.0.0.1:8470 SHAREMESH_TOKEN=... SHAREMESH_PROJECT=demo \
//     node journey.js [SHARE_ID]
//
// It needs no .proto files: the build ships the public API with its google.* imports
// as one descriptor set (gen/sharemesh-api.binpb; SHAREMESH_DESCRIPTORS overrides).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const descriptor = require('protobufjs/ext/descriptor');

const HERE = __dirname;
const DESCRIPTORS =
  process.env.SHAREMESH_DESCRIPTORS || path.join(HERE, '..', '..', 'gen', 'sharemesh-api.binpb');
const SERVICE_CONFIG = path.join(HERE, '..', 'grpc_service_config.json');

const endpoint = process.env.SHAREMESH_ENDPOINT || '127.0.0.1:8470';
const token = process.env.SHAREMESH_TOKEN || '';
const project = process.env.SHAREMESH_PROJECT || '';
const shareId = process.argv[2] || 'node-demo';

const bytes = fs.readFileSync(DESCRIPTORS);
// Stubs: keepCase keeps the proto field names (size_gib, not sizeGib); Anys stay
// {type_url, value} and are decoded below with the same descriptors.
const definition = protoLoader.loadFileDescriptorSetFromBuffer(bytes, {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const api = grpc.loadPackageDefinition(definition);
// Every message type, for Anys and for grpc-status-details-bin.
const types = protobuf.Root.fromDescriptor(descriptor.FileDescriptorSet.decode(bytes));

const options = { 'grpc.service_config': fs.readFileSync(SERVICE_CONFIG, 'utf8') };
const credentials = grpc.credentials.createInsecure();
const shares = new api.sharemesh.v1.ShareService(endpoint, credentials, options);
const operations = new api.google.longrunning.Operations(endpoint, credentials, options);

function metadata() {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline: Date.now() + 30000 }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// An Any, decoded by the type its URL names: `type.googleapis.com/sharemesh.v1.Share`.
function unpack(any) {
  const type = types.lookupType(any.type_url.slice(any.type_url.lastIndexOf('/') + 1));
  return type.toObject(type.decode(any.value), { longs: Number, enums: String, defaults: true });
}

// The google.rpc.Status a failed call carries in its trailers: code, message, and
// details such as ErrorInfo (reason, domain, metadata) and BadRequest (fields).
function richError(error) {
  const [raw] = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (!raw) return { code: error.code, message: error.details, details: [] };
  const status = types.lookupType('google.rpc.Status').decode(raw);
  return {
    code: status.code,
    message: status.message,
    details: status.details.map((any) => ({ type: any.type_url.split('/').pop(), ...unpack(any) })),
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Waits for an Operation, printing its progress from OperationMetadata.
async function wait(operation) {
  let op = operation;
  while (!op.done) {
    const meta = unpack(op.metadata);
    console.log(`  ${meta.verb} ${meta.target}: ${meta.progress_percent}% ${meta.status_detail}`);
    op = await call(operations, 'WaitOperation', { name: op.name, timeout: { seconds: 2 } });
  }
  if (op.error) {
    const failed = new Error(`${op.name} failed: ${op.error.message}`);
    failed.status = op.error;
    throw failed;
  }
  return op.response ? unpack(op.response) : null;
}

async function mutate(method, request) {
  const op = await call(shares, method, { ...request, request_id: crypto.randomUUID() });
  return wait(op);
}

async function main() {
  if (!token || !project) {
    throw new Error('set SHAREMESH_TOKEN and SHAREMESH_PROJECT (and SHAREMESH_ENDPOINT)');
  }
  const parent = `projects/${project}`;
  const name = `${parent}/shares/${shareId}`;

  const share = await mutate('CreateShare', {
    parent,
    share_id: shareId,
    share: { size_gib: 1 },
  });
  console.log(`ok create: ${share.name} ${share.state} ${share.size_gib} GiB`);

  const rule = await mutate('CreateAccessRule', {
    parent: name,
    access_rule: { access_to: '127.0.0.1', access_level: 'READ_WRITE' },
  });
  console.log(`ok allow: ${rule.access_to} ${rule.access_level} ${rule.state}`);

  const shown = await call(shares, 'GetShare', { name });
  const [where] = shown.export_locations;
  console.log(`ok show: ${where.path} nfs ${where.nfs_port} mount ${where.mount_port}`);

  const grown = await mutate('ResizeShare', { name, size_gib: 2 });
  console.log(`ok resize: ${grown.size_gib} GiB`);

  const snapshot = await mutate('CreateSnapshot', {
    parent: name,
    snapshot_id: 's1',
    snapshot: { description: 'from node' },
  });
  console.log(`ok snapshot: ${snapshot.name} ${snapshot.state}`);

  try {
    await call(shares, 'CreateShare', { parent, share_id: 'Bad_Id', share: { size_gib: 1 } });
    throw new Error('a bad share id was accepted');
  } catch (error) {
    if (error.code !== grpc.status.INVALID_ARGUMENT) throw error;
    const status = richError(error);
    const info = status.details.find((d) => d.type === 'google.rpc.ErrorInfo');
    const bad = status.details.find((d) => d.type === 'google.rpc.BadRequest');
    const fields = bad.field_violations.map((v) => v.field).join(',');
    console.log(`ok error: INVALID_ARGUMENT ${info.reason} ${info.domain} fields=${fields}`);
  }

  await mutate('DeleteSnapshot', { name: snapshot.name });
  await mutate('DeleteShare', { name });
  console.log(`ok delete: ${name}`);
}

main()
  .then(() => process.exit(0))
  .catch((error) => {
    console.error(`journey failed: ${error.message}`);
    if (error.metadata) console.error(JSON.stringify(richError(error)));
    process.exit(1);
  });
