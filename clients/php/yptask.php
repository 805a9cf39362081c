<?php
/**
 * yptask for PHP: the node's JSON-RPC API (cast, call and the admin methods) in one file.
 *
 *     require_once 'yptask.php';
 *     $yptask = new YPTask\Client('http://127.0.0.1:8700/rpc', ['token' => $publisher_token]);
 *     $answer = $yptask->cast('upai.photos.upload', ['photo_id' => 7], ['priority' => 7]);
 *     $result = $yptask->call('upai.echo', ['hello' => 'world'], 5);
 *
 * It owns the PHP publisher's side of `POST /rpc`: YPTask\Client sends one JSON-RPC 2.0
 * request per method (a batch for castMany) over a socket of its own, with a connect
 * timeout and a deadline for the whole request, so neither the curl extension nor
 * allow_url_fopen is needed (json and, for https, openssl are). Every failure throws a
 * subclass of YPTask\Error: one class per error code the node answers (the node's
 * yptask.errors.WIRE_CODES), YPTask\TransportError when the node could not be reached
 * or did not answer JSON-RPC, YPTask\InvalidParams for what the client refuses to send.
 *
 * The functions yptask_cast, yptask_cast_result, yptask_call and yptask_cancel of the
 * earlier client are kept, on top of YPTask\Client; YPTaskException is YPTask\Error.
 * PHP 8.2 or later. See README.md beside this file.
 */

declare(strict_types=1);

namespace YPTask {

    /** The root of every error of this client: getCode() is the node's JSON-RPC code
     * (0 for a transport error), getData() the error's data as the node sent it. */
    class Error extends \RuntimeException
    {
        public function __construct(string $message, int $code = 0,
                                    private readonly mixed $data = null,
                                    ?\Throwable $previous = null)
        {
            parent::__construct($message, $code, $previous);
        }

        /** The error's "data" member, decoded as arrays (null when it had none). */
        public function getData(): mixed
        {
            return $this->data;
        }

        /** The error class the node named ('NoSubscriber', a handler's 'ValueError'), or ''. */
        public function getErrorClass(): string
        {
            return is_array($this->data) && is_string($this->data['error_class'] ?? null)
                ? $this->data['error_class'] : '';
        }

        /** The exception a JSON-RPC error object stands for: by its code, and among the
         * classes that share a code by the error class in its data. */
        public static function fromWire(mixed $error): Error
        {
            if (!is_array($error)) {
                return new ProtocolError('yptask: the node answered an error that is not an '
                                         . 'object', 0);
            }
            $code = is_int($error['code'] ?? null) ? $error['code'] : 0;
            $message = is_string($error['message'] ?? null) ? $error['message'] : 'unknown error';
            $data = $error['data'] ?? null;
            $name = is_array($data) && is_string($data['error_class'] ?? null)
                ? $data['error_class'] : '';
            $class = Errors::BY_CLASS_NAME[$code][$name] ?? Errors::BY_CODE[$code]
                ?? RemoteError::class;
            return new $class($message, $code, $data);
        }
    }

    /** The node could not be reached, or did not answer JSON-RPC (code 0). */
    class TransportError extends Error
    {
    }

    /** No connection within the connect timeout, or no whole answer within the request
     * timeout (the request may or may not have been carried out). */
    class RequestTimeout extends TransportError
    {
    }

    /** -32600, -32700: the node could not read the request (not JSON, not JSON-RPC, over its
     * size limit), or answered one this client cannot read. */
    class ProtocolError extends Error
    {
    }

    /** -32700: the body was not JSON or not UTF-8. */
    class DecodeError extends ProtocolError
    {
    }

    /** -32601: the node has no such method (an older node). */
    class NoSuchFunction extends Error
    {
    }

    /** -32602: a parameter refused; the message names it ('priority', msg.photos[3].size).
     * Also thrown, before anything is sent, for what the client cannot send. */
    class InvalidParams extends Error
    {
    }

    /** -32000: the handler raised; getErrorClass(), getDetail() and getBacktrace() are its. */
    class HandlerError extends Error
    {
        public function getDetail(): string
        {
            $data = $this->getData();
            return is_array($data) && is_string($data['detail'] ?? null)
                ? $data['detail'] : $this->getMessage();
        }

        /** @return list<string> the handler's traceback, one line an entry */
        public function getBacktrace(): array
        {
            $data = $this->getData();
            $lines = is_array($data) && is_array($data['backtrace'] ?? null)
                ? $data['backtrace'] : [];
            return array_values(array_map('strval', array_filter($lines, 'is_scalar')));
        }
    }

    /** -32001: the task's worker has no handler for the name. */
    class NoSuchHandler extends Error
    {
    }

    /** -32002: a payload or result that cannot travel as BERT. */
    class EncodeError extends Error
    {
    }

    /** -32003: no answer from a worker within the call's timeout. */
    class CallTimeout extends Error
    {
    }

    /** -32004: the worker died while handling the call. */
    class WorkerExited extends Error
    {
    }

    /** -32019: the task's HTTP or FastCGI endpoint cannot be reached (nothing was sent). */
    class WorkerUnreachable extends WorkerExited
    {
    }

    /** -32005: no task by that name. */
    class UnknownTask extends Error
    {
    }

    /** -32006: no task subscribes to the name (or, for a call, none runs on a live node). */
    class NoSubscriber extends Error
    {
    }

    /** -32007: a queue or the journal is over its limit; retry later. */
    class Overloaded extends Error
    {
    }

    /** -32007 (IdPending): another node is taking the cast's id; retry in a moment. */
    class IdPending extends Overloaded
    {
    }

    /** -32018: the task does not accept messages now (accepting = false, or this
     * application is in its refuse_tokens); a kind of Overloaded: retry later. */
    class NotAccepting extends Overloaded
    {
    }

    /** -32008: the node is shutting down. */
    class NodeStopping extends Error
    {
    }

    /** -32009: no timer by that name. */
    class UnknownTimer extends Error
    {
    }

    /** -32010 to -32013: the node's supervision could not do what was asked. */
    class SupervisionError extends Error
    {
    }

    /** -32014: a call sent on to another node found no working link to it. */
    class LinkError extends Error
    {
    }

    /** -32015: a missing or wrong token, password or session, or a foreign Host/Origin. */
    class Unauthorized extends Error
    {
    }

    /** -32024: a read-only caller (viewer token or viewer password) asked for a change. */
    class Forbidden extends Unauthorized
    {
    }

    /** -32016: the task's workers cannot start on the node; the message says why. */
    class WorkerStartFailed extends Error
    {
    }

    /** -32017: a call for a paused task (a cast waits for the resume). */
    class TaskPaused extends Error
    {
    }

    /** -32603: an unexpected error on the node; getReference() finds it in the node's log. */
    class InternalError extends Error
    {
        public function getReference(): string
        {
            $data = $this->getData();
            return is_array($data) && is_string($data['reference'] ?? null)
                ? $data['reference'] : '';
        }
    }

    /** An error code this client does not know (a newer node). */
    class RemoteError extends Error
    {
    }

    /** The one table of the node's JSON-RPC error codes, as yptask.errors.WIRE_CODES has them. */
    final class Errors
    {
        public const BY_CODE = [
            -32700 => DecodeError::class,
            -32600 => ProtocolError::class,
            -32601 => NoSuchFunction::class,
            -32602 => InvalidParams::class,
            -32000 => HandlerError::class,
            -32001 => NoSuchHandler::class,
            -32002 => EncodeError::class,
            -32003 => CallTimeout::class,
            -32004 => WorkerExited::class,
            -32005 => UnknownTask::class,
            -32006 => NoSubscriber::class,
            -32007 => Overloaded::class,
            -32008 => NodeStopping::class,
            -32009 => UnknownTimer::class,
            -32010 => SupervisionError::class,
            -32011 => SupervisionError::class,
            -32012 => SupervisionError::class,
            -32013 => SupervisionError::class,
            -32014 => LinkError::class,
            -32015 => Unauthorized::class,
            -32016 => WorkerStartFailed::class,
            -32017 => TaskPaused::class,
            -32018 => NotAccepting::class,
            -32019 => WorkerUnreachable::class,
            -32024 => Forbidden::class,
            -32603 => InternalError::class,
        ];

        /** Codes several error classes share: the one named by the data's error_class. */
        public const BY_CLASS_NAME = [
            -32007 => ['IdPending' => IdPending::class],
        ];
    }

    /** A connection to one node's JSON-RPC API. Each method sends one request. */
    final class Client
    {
        public const DEFAULT_URL = 'http://127.0.0.1:8700/rpc';

        /** What a publisher token grants; every other method is an admin one. */
        public const PUBLISHING = ['cast', 'call', 'message.cancelled'];

        /** The cast options, each sent only when given (not null). */
        public const CAST_NUMBERS = ['priority', 'ttl_s', 'deadline', 'delay_s', 'at'];
        public const CAST_STRINGS = ['id', 'traceparent', 'parent'];
        public const CALL_STRINGS = ['traceparent', 'parent'];

        private const SETTINGS = ['token', 'admin_token', 'password', 'timeout_s',
                                  'connect_timeout_s', 'ssl'];

        public readonly string $url;
        public readonly float $timeout_s;
        public readonly float $connect_timeout_s;
        private readonly string $scheme;
        private readonly string $host;
        private readonly int $port;
        private readonly string $path;
        private readonly ?string $publisher_auth;
        private readonly ?string $admin_auth;
        /** @var array<string, mixed> */
        private readonly array $ssl;
        private int $next_id = 0;

        /**
         * $url: the node's JSON-RPC URL (default: $YPTASK_URL, else DEFAULT_URL).
         * $settings:
         *   'token'        a publisher token (the node's api_tokens), for cast, call and
         *                  messageCancelled; default $YPTASK_TOKEN
         *   'admin_token'  the node's admin token (the file admin-token in its data dir),
         *                  for the admin methods (and for cast and call without 'token');
         *                  default $YPTASK_ADMIN_TOKEN
         *   'password'     the console password, sent as HTTP Basic where no admin token is
         *                  given; default $YPTASK_PASSWORD
         *   'timeout_s'    seconds for a whole request, connect to last byte (default 10;
         *                  a call waits its own timeout on top)
         *   'connect_timeout_s'  seconds to connect (default 3)
         *   'ssl'          stream context ssl options for an https URL (cafile, ...)
         */
        public function __construct(?string $url = null, array $settings = [])
        {
            foreach (array_keys($settings) as $key) {
                if (!in_array($key, self::SETTINGS, true)) {
                    throw new InvalidParams("yptask: unknown client setting '$key'; the settings"
                                            . ' are ' . implode(', ', self::SETTINGS), -32602);
                }
            }
            $url ??= self::environment('YPTASK_URL') ?? self::DEFAULT_URL;
            $parts = parse_url($url);
            $scheme = is_array($parts) ? strtolower($parts['scheme'] ?? '') : '';
            // the URL's path goes into the request line as it is: no space or control byte
            if (!in_array($scheme, ['http', 'https'], true) || ($parts['host'] ?? '') === ''
                    || preg_match('/[\x00-\x20\x7f]/', $url)) {
                throw new InvalidParams("yptask: a node's URL is http(s)://HOST:PORT/rpc, got "
                                        . var_export($url, true), -32602);
            }
            $this->url = $url;
            $this->scheme = $scheme;
            $this->host = $parts['host'];
            $this->port = $parts['port'] ?? ($scheme === 'https' ? 443 : 80);
            $this->path = (($parts['path'] ?? '') === '' ? '/' : $parts['path'])
                . (isset($parts['query']) ? "?{$parts['query']}" : '');
            $this->timeout_s = self::seconds($settings, 'timeout_s', 10.0);
            $this->connect_timeout_s = self::seconds($settings, 'connect_timeout_s', 3.0);
            $this->ssl = (array) ($settings['ssl'] ?? []);
            $token = self::secret($settings, 'token', 'YPTASK_TOKEN');
            $admin = self::secret($settings, 'admin_token', 'YPTASK_ADMIN_TOKEN');
            $password = self::secret($settings, 'password', 'YPTASK_PASSWORD');
            $basic = $password === null ? null : 'Basic ' . base64_encode("yptask:$password");
            $this->admin_auth = $admin !== null ? "Bearer $admin" : $basic;
            $this->publisher_auth = $token !== null ? "Bearer $token" : $this->admin_auth;
        }

        // ------------------------------------------------------------- publishing

        /**
         * Publish $msg under $name; return ['id', 'tasks', 'duplicate'] (and 'not_before',
         * epoch seconds, for a delayed cast) once the node has journaled it.
         *
         * $options: 'priority' (0 lowest to 9; default each task's own), 'ttl_s' or
         * 'deadline' (expire unless a worker takes it within so many seconds, or by this
         * epoch time), 'delay_s' or 'at' (deliver no sooner than so many seconds from now,
         * or than this epoch time), 'id' (your id: a repeated one is a duplicate, not
         * delivered again), 'traceparent' (a W3C trace context to join), 'parent' (the id
         * of the message this one follows from). The node checks the values and names the
         * one it refuses (InvalidParams).
         */
        public function cast(string $name, mixed $msg, array $options = []): array
        {
            $result = $this->request('cast', self::castParams($name, $msg, $options));
            if (!is_array($result) || !is_string($result['id'] ?? null)) {
                throw new ProtocolError('yptask: cast answered without a message id', 0);
            }
            return $result;
        }

        /**
         * Several casts in one request (a JSON-RPC batch), each journaled or refused on its
         * own. $casts: a list of [$name, $msg] or [$name, $msg, $options]. Returns, in the
         * same order, each cast's answer (as cast() returns it) or the YPTask\Error it was
         * refused with; throws only when the batch as a whole fails (unreachable node, a
         * body over the node's size limit).
         *
         * @return list<array|Error>
         */
        public function castMany(array $casts): array
        {
            if ($casts === []) {
                return [];
            }
            $batch = [];
            foreach (array_values($casts) as $index => $cast) {
                if (!is_array($cast) || !array_is_list($cast) || count($cast) < 2
                        || count($cast) > 3 || !is_string($cast[0])
                        || !is_array($cast[2] ?? [])) {
                    throw new InvalidParams("yptask: castMany: cast $index is not [name, msg]"
                                            . ' or [name, msg, options]', -32602);
                }
                $batch[] = ['cast', self::castParams($cast[0], $cast[1], $cast[2] ?? [])];
            }
            return $this->send($batch, $this->timeout_s);
        }

        /**
         * Have one worker of a subscribed task handle $msg now and return its result.
         * $timeout_s: how long the node waits for it (over 0, at most 86400); the request
         * waits that long plus the client's timeout_s. $options: 'traceparent', 'parent'.
         */
        public function call(string $name, mixed $msg, int|float $timeout_s = 30,
                             array $options = []): mixed
        {
            $params = ['name' => $name, 'msg' => self::payload($msg), 'timeout' => $timeout_s]
                + self::options('call', $options, [], self::CALL_STRINGS);
            return $this->request('call', $params,
                                  max((float) $timeout_s, 0.0) + $this->timeout_s);
        }

        /** Whether this node took a cancel of message $id (what a handler asks; publishers
         * may ask it). */
        public function messageCancelled(string $id): bool
        {
            return self::expect($this->request('message.cancelled', ['id' => $id]), 'bool',
                                'message.cancelled');
        }

        // ------------------------------------------------------------- admin

        /** Withdraw message $id where it waits (queued, delayed, retrying), on every node:
         * ['cancelled' => [node => [task]], 'running' => [node => [task]], 'unreached' => [node]]. */
        public function cancel(string $id): array
        {
            return self::expect($this->request('cancel', ['id' => $id]), 'array', 'cancel');
        }

        /** The node's status: ['node', 'uptime_s', 'tasks' => [name => [...]], 'client_ids']. */
        public function status(): array
        {
            return self::expect($this->request('status'), 'array', 'status');
        }

        /** What waits on this node for a later time (delayed casts, retries), soonest first. */
        public function scheduled(int $limit = 100): array
        {
            return self::expect($this->request('scheduled.list', ['limit' => $limit]), 'array',
                                'scheduled.list');
        }

        /** Every message of a trace (a trace id, or a message or call id of it), on every live
         * node: ['trace_id', 'messages', 'unreached']. */
        public function trace(string $id): array
        {
            return self::expect($this->request('trace', ['id' => $id]), 'array', 'trace');
        }

        /** The dead letters, newest first. */
        public function deadLetters(int $limit = 100): array
        {
            return self::expect($this->request('dead.list', ['limit' => $limit]), 'array',
                                'dead.list');
        }

        /** Put dead letter $id back in its queue (for $task only, or every task it died in);
         * return how many were requeued. */
        public function replay(string $id, ?string $task = null): int
        {
            return self::expect($this->request('dead.replay', ['id' => $id, 'task' => $task]),
                                'int', 'dead.replay');
        }

        /** The most recent failed attempts on this node, newest first. */
        public function failures(int $limit = 100): array
        {
            return self::expect($this->request('failures.list', ['limit' => $limit]), 'array',
                                'failures.list');
        }

        /** Per task, points every $step seconds over the last $span. */
        public function metrics(int $step = 10, int $span = 600): array
        {
            return self::expect($this->request('metrics', ['step' => $step, 'span' => $span]),
                                'array', 'metrics');
        }

        /** Pause task $name on every node: casts are journaled and wait, calls are refused
         * (TaskPaused). Returns the stored definition. */
        public function pause(string $name): array
        {
            return self::expect($this->request('tasks.pause', ['name' => $name]), 'array',
                                'tasks.pause');
        }

        /** Resume a paused task: what waited is delivered. Returns the stored definition. */
        public function resume(string $name): array
        {
            return self::expect($this->request('tasks.resume', ['name' => $name]), 'array',
                                'tasks.resume');
        }

        /** Every task definition. */
        public function tasks(): array
        {
            return self::expect($this->request('tasks.list'), 'array', 'tasks.list');
        }

        /** One task definition (UnknownTask if there is none). */
        public function task(string $name): array
        {
            return self::expect($this->request('tasks.get', ['name' => $name]), 'array',
                                'tasks.get');
        }

        /** Create or replace a task; the stored definition with 'changed'. */
        public function putTask(array $definition): array
        {
            return self::expect($this->request('tasks.put',
                                               ['definition' => self::payload($definition)]),
                                'array', 'tasks.put');
        }

        public function deleteTask(string $name): void
        {
            $this->request('tasks.delete', ['name' => $name]);
        }

        /** Rolling restart of a task's workers: ['task', 'generation', 'replaced', 'workers']. */
        public function restart(string $name): array
        {
            return self::expect($this->request('tasks.restart', ['name' => $name]), 'array',
                                'tasks.restart');
        }

        public function timers(): array
        {
            return self::expect($this->request('timers.list'), 'array', 'timers.list');
        }

        public function timer(string $name): array
        {
            return self::expect($this->request('timers.get', ['name' => $name]), 'array',
                                'timers.get');
        }

        public function putTimer(array $definition): array
        {
            return self::expect($this->request('timers.put',
                                               ['definition' => self::payload($definition)]),
                                'array', 'timers.put');
        }

        public function deleteTimer(string $name): void
        {
            $this->request('timers.delete', ['name' => $name]);
        }

        /** The cluster's members, this node first. */
        public function nodes(): array
        {
            return self::expect($this->request('nodes'), 'array', 'nodes');
        }

        /** Take a node that is gone for good off the timer lease's roster. */
        public function forgetNode(string $name): array
        {
            return self::expect($this->request('nodes.forget', ['name' => $name]), 'array',
                                'nodes.forget');
        }

        // ------------------------------------------------------------- the wire

        /** Send one JSON-RPC request (params by name, or a list by position) and return its
         * result, or throw its error. $timeout_s: this request's (default the client's). */
        public function request(string $method, ?array $params = null,
                                ?float $timeout_s = null): mixed
        {
            $answer = $this->send([[$method, $params]], $timeout_s ?? $this->timeout_s)[0];
            if ($answer instanceof Error) {
                throw $answer;
            }
            return $answer;
        }

        /**
         * Send [[method, params], ...] (one request, or a batch of several) and return each
         * one's result or Error, in order.
         *
         * @return list<mixed>
         */
        private function send(array $requests, float $timeout_s): array
        {
            $calls = [];
            $public = true;
            foreach ($requests as [$method, $params]) {
                $call = ['jsonrpc' => '2.0', 'method' => $method, 'id' => ++$this->next_id];
                if ($params !== null) {
                    $call['params'] = $params;
                }
                $calls[] = $call;
                $public = $public && in_array($method, self::PUBLISHING, true);
            }
            $what = count($calls) === 1 ? $calls[0]['method'] : 'the batch';
            try {
                $body = json_encode(count($calls) === 1 ? $calls[0] : $calls,
                                    JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES
                                    | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
            } catch (\JsonException $e) {
                throw new InvalidParams("yptask: cannot send $what: its 'msg' or params are not "
                                        . 'JSON (' . $e->getMessage() . '); nothing was sent',
                                        -32602, null, $e);
            }
            [$status, $raw] = $this->post($body, $public ? $this->publisher_auth
                                                         : $this->admin_auth, $timeout_s);
            try {
                $answer = json_decode($raw, true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
            } catch (\JsonException) {
                throw new TransportError("yptask: the node at {$this->url} answered HTTP $status "
                                         . 'without JSON-RPC; check that the URL ends in /rpc');
            }
            if (is_array($answer) && isset($answer['jsonrpc'])) {
                $answer = [$answer];  // one answer (a whole batch refused is one too)
            }
            if (!is_array($answer) || !array_is_list($answer)) {
                throw new TransportError("yptask: the node at {$this->url} did not answer "
                                         . 'JSON-RPC 2.0');
            }
            $by_id = [];
            foreach ($answer as $one) {
                if (!is_array($one) || ($one['jsonrpc'] ?? null) !== '2.0') {
                    throw new TransportError("yptask: the node at {$this->url} did not answer "
                                             . 'JSON-RPC 2.0');
                }
                if (($one['id'] ?? null) === null && isset($one['error'])) {
                    throw Error::fromWire($one['error']);  // the whole request was refused
                }
                $by_id[$one['id'] ?? ''] = $one;
            }
            $results = [];
            foreach ($calls as $call) {
                $one = $by_id[$call['id']] ?? null;
                if (is_array($one) && isset($one['error'])) {
                    $results[] = Error::fromWire($one['error']);
                } elseif (is_array($one) && array_key_exists('result', $one)) {
                    $results[] = $one['result'];
                } else {
                    $results[] = new ProtocolError("yptask: the node at {$this->url} answered "
                                                   . "without a result for {$call['method']}");
                }
            }
            return $results;
        }

        /** POST $body and return [HTTP status, body], within $timeout_s from the start. */
        private function post(string $body, ?string $auth, float $timeout_s): array
        {
            $deadline = microtime(true) + $timeout_s;
            $host_header = $this->host . ($this->port === ($this->scheme === 'https' ? 443 : 80)
                ? '' : ":{$this->port}");
            $head = "POST {$this->path} HTTP/1.1\r\nHost: $host_header\r\n"
                . "Content-Type: application/json\r\nAccept: application/json\r\n"
                . 'Content-Length: ' . strlen($body) . "\r\nConnection: close\r\n"
                . ($auth !== null ? "Authorization: $auth\r\n" : '') . "\r\n";
            $socket = $this->connect(min($this->connect_timeout_s, $timeout_s));
            try {
                $problem = $this->write($socket, $head . $body, $deadline);
                return $this->read($socket, $deadline, $problem);
            } finally {
                fclose($socket);
            }
        }

        /** @return resource */
        private function connect(float $timeout_s)
        {
            $tls = $this->scheme === 'https';
            $context = stream_context_create(['ssl' => $this->ssl + [
                'verify_peer' => true, 'verify_peer_name' => true,
                'peer_name' => trim($this->host, '[]'), 'SNI_enabled' => true]]);
            $problems = [];  // PHP's warnings: a TLS failure says why only in them
            set_error_handler(function (int $no, string $text) use (&$problems): bool {
                $problems[] = preg_replace('/^stream_socket_client\(\): /', '', $text);
                return true;
            });
            try {
                $socket = stream_socket_client(($tls ? 'tls://' : 'tcp://')
                                               . "{$this->host}:{$this->port}", $errno, $errstr,
                                               $timeout_s, STREAM_CLIENT_CONNECT, $context);
            } finally {
                restore_error_handler();
            }
            if ($socket === false) {
                // errstr, and what the warnings add to it ("Unable to connect" repeats it)
                $reasons = array_filter($problems, fn (string $text): bool =>
                    !str_starts_with($text, 'Unable to connect') && $text !== $errstr);
                if ($errstr !== '' && $errstr !== 'Unknown error') {
                    array_unshift($reasons, $errstr);
                }
                $why = $reasons === [] ? 'no connection' : implode('; ', array_unique($reasons));
                if ($errno === 110 || stripos($why, 'timed out') !== false) {
                    throw new RequestTimeout("yptask: cannot reach the node at {$this->url}: no "
                                             . "connection within $timeout_s s (connect_timeout_s)");
                }
                throw new TransportError("yptask: cannot reach the node at {$this->url}: $why; "
                                         . 'check that `yptask node` runs there, or set '
                                         . 'YPTASK_URL');
            }
            return $socket;
        }

        /** Write $bytes; return why the node stopped taking them, or null once all went.
         * @param resource $socket */
        private function write($socket, string $bytes, float $deadline): ?string
        {
            $problem = null;
            set_error_handler(function (int $no, string $text) use (&$problem): bool {
                $problem = $text;
                return true;
            });
            try {
                while ($bytes !== '') {
                    $this->waitUntil($socket, $deadline);
                    $written = fwrite($socket, $bytes);
                    if ($written === false || $written === 0) {
                        if (stream_get_meta_data($socket)['timed_out']) {
                            $this->timedOut();
                        }
                        // the node closed early (a body over its limit): read its answer
                        return $problem ?? 'the node stopped reading the request';
                    }
                    $bytes = substr($bytes, $written);
                }
            } finally {
                restore_error_handler();
            }
            return null;
        }

        /** [status, body] of the answer; $problem: what went wrong while writing, if anything.
         * @param resource $socket */
        private function read($socket, float $deadline, ?string $problem = null): array
        {
            $raw = '';
            set_error_handler(function (int $no, string $text) use (&$problem): bool {
                $problem = $text;
                return true;
            });
            try {
                while (!feof($socket)) {
                    $this->waitUntil($socket, $deadline);
                    $chunk = fread($socket, 65536);
                    if (($chunk === false || $chunk === '')
                            && stream_get_meta_data($socket)['timed_out']) {
                        $this->timedOut();
                    }
                    if ($chunk === false) {
                        break;
                    }
                    $raw .= $chunk;
                    if (($response = self::response($raw)) !== null) {
                        return $response;
                    }
                }
            } finally {
                restore_error_handler();
            }
            return self::response($raw, true) ?? throw new TransportError(
                "yptask: the node at {$this->url} closed the connection without a whole answer"
                . ($problem !== null ? " ($problem)" : ''));
        }

        /** @param resource $socket */
        private function waitUntil($socket, float $deadline): void
        {
            $left = $deadline - microtime(true);
            if ($left <= 0) {
                $this->timedOut();
            }
            $seconds = (int) floor($left);
            stream_set_timeout($socket, $seconds, (int) (($left - $seconds) * 1e6));
        }

        private function timedOut(): never
        {
            throw new RequestTimeout("yptask: no answer from the node at {$this->url} within "
                                     . 'the request timeout (timeout_s); check that the node is '
                                     . 'not overloaded, or raise timeout_s');
        }

        /** [status, body] once $raw holds a whole HTTP response (at the end of the stream,
         * $closed, a response without a length is whole), else null. */
        private static function response(string $raw, bool $closed = false): ?array
        {
            $end = strpos($raw, "\r\n\r\n");
            if ($end === false) {
                return null;
            }
            $lines = explode("\r\n", substr($raw, 0, $end));
            if (!preg_match('#^HTTP/\d(?:\.\d)?\s+(\d{3})#', $lines[0], $m)) {
                return $closed ? [0, ''] : null;
            }
            $headers = [];
            foreach (array_slice($lines, 1) as $line) {
                [$key, $value] = array_pad(explode(':', $line, 2), 2, '');
                $headers[strtolower(trim($key))] = trim($value);
            }
            $body = substr($raw, $end + 4);
            if (str_contains(strtolower($headers['transfer-encoding'] ?? ''), 'chunked')) {
                $decoded = self::dechunk($body);
                return $decoded === null ? null : [(int) $m[1], $decoded];
            }
            if (isset($headers['content-length'])) {
                $length = (int) $headers['content-length'];
                return strlen($body) >= $length ? [(int) $m[1], substr($body, 0, $length)] : null;
            }
            return $closed ? [(int) $m[1], $body] : null;
        }

        /** A chunked body decoded, or null while it is not whole. */
        private static function dechunk(string $body): ?string
        {
            $out = '';
            $at = 0;
            while (true) {
                $eol = strpos($body, "\r\n", $at);
                if ($eol === false) {
                    return null;
                }
                $size = hexdec(trim(explode(';', substr($body, $at, $eol - $at))[0]));
                if ($size === 0) {
                    return $out;
                }
                if (strlen($body) < $eol + 2 + $size + 2) {
                    return null;
                }
                $out .= substr($body, $eol + 2, (int) $size);
                $at = $eol + 2 + (int) $size + 2;
            }
        }

        // ------------------------------------------------------------- checks

        private static function castParams(string $name, mixed $msg, array $options): array
        {
            return ['name' => $name, 'msg' => self::payload($msg)]
                + self::options('cast', $options, self::CAST_NUMBERS, self::CAST_STRINGS);
        }

        /**
         * The options given (not null): numbers as int or float (a numeric string, as a
         * form gives it, becomes one), strings as strings (an int becomes one). Any other
         * value is sent as it is, for the node to refuse by the field's name; an option this
         * method does not take is refused here (a misspelt one would be lost).
         */
        private static function options(string $method, array $options, array $numbers,
                                        array $strings): array
        {
            $params = [];
            foreach ($options as $key => $value) {
                if (!in_array($key, $numbers, true) && !in_array($key, $strings, true)) {
                    throw new InvalidParams("yptask: $method has no option '$key'; its options "
                                            . 'are ' . implode(', ', [...$numbers, ...$strings])
                                            . '; nothing was sent', -32602);
                }
                if ($value === null) {
                    continue;
                }
                if (in_array($key, $numbers, true)) {
                    $params[$key] = (is_string($value) && is_numeric($value)) ? $value + 0 : $value;
                } else {
                    $params[$key] = is_int($value) ? (string) $value : $value;
                }
            }
            return $params;
        }

        /** A payload of [] means "no fields": send it as {} rather than as an empty list. */
        private static function payload(mixed $msg): mixed
        {
            return $msg === [] ? new \stdClass() : $msg;
        }

        private static function expect(mixed $value, string $type, string $method): mixed
        {
            if (get_debug_type($value) !== $type) {
                throw new ProtocolError("yptask: $method answered " . get_debug_type($value)
                                        . ", expected $type", 0);
            }
            return $value;
        }

        private static function seconds(array $settings, string $key, float $default): float
        {
            $value = $settings[$key] ?? $default;
            if (!is_int($value) && !is_float($value) || !($value > 0) || is_infinite($value)) {
                throw new InvalidParams("yptask: the client setting '$key' must be a number of "
                                        . 'seconds over 0, got ' . var_export($value, true),
                                        -32602);
            }
            return (float) $value;
        }

        /** A credential: the setting, else the environment variable, else null. */
        private static function secret(array $settings, string $key, string $variable): ?string
        {
            $value = $settings[$key] ?? self::environment($variable);
            if ($value === null || $value === '') {
                return null;
            }
            if (!is_string($value)) {
                throw new InvalidParams("yptask: the client setting '$key' must be a string",
                                        -32602);
            }
            if ($key !== 'password' && preg_match('/[\x00-\x1f\x7f]/', $value)) {
                // a token goes into a header line as it is: a control character would end it
                throw new InvalidParams("yptask: the client setting '$key' holds a control "
                                        . 'character; nothing was sent', -32602);
            }
            return $value;
        }

        private static function environment(string $variable): ?string
        {
            $value = getenv($variable);
            return ($value === false || $value === '') ? null : $value;
        }
    }
}

namespace {

    /** The earlier client's exception class: every error of the client is one. */
    class_alias(\YPTask\Error::class, 'YPTaskException');

    /** The node's JSON-RPC URL: the YPTASK_URL constant, else $YPTASK_URL, else the default. */
    function yptask_url(): string
    {
        if (defined('YPTASK_URL')) {
            return (string) constant('YPTASK_URL');
        }
        $env = getenv('YPTASK_URL');
        return ($env !== false && $env !== '') ? $env : \YPTask\Client::DEFAULT_URL;
    }

    /**
     * A client for the functions below, from their options 'url', 'token' (sent for
     * publishing and admin methods alike; default $YPTASK_TOKEN) and 'timeout' (seconds,
     * default 10), which it takes out of $options.
     */
    function yptask_client(array &$options): \YPTask\Client
    {
        $token = $options['token'] ?? null;
        $settings = ['timeout_s' => $options['timeout'] ?? 10];
        if ($token !== null && $token !== '') {
            $settings += ['token' => $token, 'admin_token' => $token];
        } elseif (($env = getenv('YPTASK_TOKEN')) !== false && $env !== '') {
            $settings += ['token' => $env, 'admin_token' => $env];
        }
        $url = isset($options['url']) ? (string) $options['url'] : yptask_url();
        unset($options['url'], $options['token'], $options['timeout']);
        return new \YPTask\Client($url, $settings);
    }

    /** Publish $msg under $name; return the message id (YPTask\Client::cast's options, and
     * 'url', 'token', 'timeout'). */
    function yptask_cast(string $name, mixed $msg, array $options = []): string
    {
        return (string) yptask_cast_result($name, $msg, $options)['id'];
    }

    /** yptask_cast, returning the node's whole answer: ['id', 'tasks', 'duplicate'] (and
     * 'not_before' for a delayed cast). */
    function yptask_cast_result(string $name, mixed $msg, array $options = []): array
    {
        return yptask_client($options)->cast($name, $msg, $options);
    }

    /** Have one worker handle $msg and return its result, waiting at most $timeout seconds;
     * $options 'traceparent', 'parent', 'url', 'token'. */
    function yptask_call(string $name, mixed $msg, int|float $timeout = 30,
                         array $options = []): mixed
    {
        return yptask_client($options)->call($name, $msg, $timeout, $options);
    }

    /** Cancel message $id where it has not started (an admin method: 'token' or
     * $YPTASK_TOKEN must be the node's admin token). */
    function yptask_cancel(string $id, array $options = []): array
    {
        return yptask_client($options)->cancel($id);
    }
}
