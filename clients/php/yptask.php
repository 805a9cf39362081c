<?php
/**
 * yptask publisher helpers for PHP: cast and call over the node's JSON-RPC API.
 *
 *     require 'yptask.php';
 *     $id = yptask_cast('upai.photos.upload', ['photo_id' => 7]);
 *     $answer = yptask_call('upai.echo', ['hello' => 'world'], 5);
 *     $later = yptask_cast_result('upai.report', [], ['delay_s' => 3600, 'priority' => 7]);
 *     $undone = yptask_cancel($later['id'], ['token' => $admin_token]);
 *
 * Load it once (require_once). The node's URL comes from the YPTASK_URL constant if defined, else the
 * YPTASK_URL environment variable, else http://127.0.0.1:8700/rpc. Requests go
 * through PHP streams (file_get_contents with a stream context), so the curl
 * extension is not needed; the json extension is (it is built in since PHP 8).
 * Every failure throws a YPTaskException carrying the JSON-RPC error code
 * (getCode(); 0 when the node could not be reached) and data (getData()).
 * Credentials: the option 'token' (a publisher token, or the node's admin token for
 * yptask_cancel), else the YPTASK_TOKEN environment variable, sent as a Bearer token.
 * PHP 8.2 compatible.
 */

declare(strict_types=1);

if (!class_exists('YPTaskException', false)) {
    /** Thrown when a cast or call fails; getCode() is the JSON-RPC error code. */
    class YPTaskException extends RuntimeException
    {
        private mixed $data;

        /** $data is the error's "data" member, decoded as arrays. */
        public function __construct(string $message, int $code = 0, mixed $data = null)
        {
            parent::__construct($message, $code);
            $this->data = $data;
        }

        /** The error's data, e.g. ['error_class' => ..., 'detail' => ..., 'backtrace' => [...]]. */
        public function getData(): mixed
        {
            return $this->data;
        }

        /** The error class the node reported ('NoSubscriber', or a handler's 'ValueError'), or ''. */
        public function getErrorClass(): string
        {
            return is_array($this->data) && isset($this->data['error_class'])
                ? (string) $this->data['error_class'] : '';
        }
    }
}

/** The node's JSON-RPC URL: the YPTASK_URL constant, else $YPTASK_URL, else the default. */
function yptask_url(): string
{
    if (defined('YPTASK_URL')) {
        return (string) constant('YPTASK_URL');
    }
    $env = getenv('YPTASK_URL');
    return ($env !== false && $env !== '') ? $env : 'http://127.0.0.1:8700/rpc';
}

/** The cast options the node takes, each sent only when given, as the node wants it. */
const YPTASK_CAST_NUMBERS = ['priority', 'ttl_s', 'deadline', 'delay_s', 'at'];
const YPTASK_CAST_STRINGS = ['id', 'traceparent', 'parent'];

/**
 * Publish $msg under $name; return the message id once the node has stored it.
 *
 * $options: 'id' (your own id, to make a retry a no-op), 'priority' (0 lowest to 9;
 * default: each task's own), 'ttl_s' or 'deadline' (expire if not delivered within so
 * many seconds, or by this epoch time), 'delay_s' or 'at' (deliver no sooner than so many
 * seconds from now, or than this epoch time), 'traceparent' (a W3C trace context; default
 * a new trace), 'parent' (the id of the message this one follows from); 'timeout'
 * (seconds to wait for the node, default 10), 'url', 'token'. The node checks each option
 * and names the one it refuses (a YPTaskException).
 */
function yptask_cast(string $name, mixed $msg, array $options = []): string
{
    return (string) yptask_cast_result($name, $msg, $options)['id'];
}

/**
 * yptask_cast, returning the node's whole answer: ['id' => ..., 'tasks' => [task, ...],
 * 'duplicate' => bool] and 'not_before' (epoch seconds) for a delayed cast.
 */
function yptask_cast_result(string $name, mixed $msg, array $options = []): array
{
    $params = ['name' => $name, 'msg' => yptask_payload($msg)]
        + yptask_options($options, YPTASK_CAST_NUMBERS, YPTASK_CAST_STRINGS);
    $result = yptask_request('cast', $params, (float) ($options['timeout'] ?? 10),
                             yptask_option_url($options), yptask_token($options));
    if (!is_array($result) || !isset($result['id'])) {
        throw new YPTaskException('yptask: cast answered without a message id');
    }
    return $result;
}

/**
 * Have one worker handle $msg and return its result; wait at most $timeout seconds.
 *
 * $options: 'traceparent', 'parent' (as for yptask_cast; sent only when given), 'url',
 * 'token'.
 */
function yptask_call(string $name, mixed $msg, int|float $timeout = 30, array $options = []): mixed
{
    $params = ['name' => $name, 'msg' => yptask_payload($msg), 'timeout' => $timeout]
        + yptask_options($options, [], ['traceparent', 'parent']);
    return yptask_request('call', $params, $timeout + 10.0, yptask_option_url($options),
                          yptask_token($options));
}

/**
 * Cancel the message $id where it has not started yet, on every node; return the node's
 * answer: ['cancelled' => [node => [task, ...]], 'running' => [node => [task, ...]]]
 * ('running': deliveries already handed to a worker, which finish).
 *
 * An admin method: $options 'token' (or YPTASK_TOKEN) must be the node's admin token
 * (the file admin-token in its data dir). Also 'timeout' (default 10) and 'url'.
 */
function yptask_cancel(string $id, array $options = []): array
{
    $result = yptask_request('cancel', ['id' => $id], (float) ($options['timeout'] ?? 10),
                             yptask_option_url($options), yptask_token($options));
    if (!is_array($result)) {
        throw new YPTaskException('yptask: cancel answered without its cancelled deliveries');
    }
    return $result;
}

/**
 * The options of $options named in $numbers and $strings that are given (not null):
 * numbers as int or float (a numeric string becomes one), strings as strings. Anything
 * else is sent as it is, for the node to refuse by the field's name.
 */
function yptask_options(array $options, array $numbers, array $strings): array
{
    $params = [];
    foreach ($numbers as $key) {
        if (isset($options[$key])) {
            $value = $options[$key];
            $params[$key] = (is_string($value) && is_numeric($value)) ? $value + 0 : $value;
        }
    }
    foreach ($strings as $key) {
        if (isset($options[$key])) {
            $value = $options[$key];
            $params[$key] = (is_int($value) || is_string($value)) ? (string) $value : $value;
        }
    }
    return $params;
}

function yptask_option_url(array $options): ?string
{
    return isset($options['url']) ? (string) $options['url'] : null;
}

/** The token to send: the option 'token', else $YPTASK_TOKEN, else none. */
function yptask_token(array $options): ?string
{
    $token = null;
    if (isset($options['token']) && $options['token'] !== '') {
        $token = (string) $options['token'];
    } elseif (($env = getenv('YPTASK_TOKEN')) !== false && $env !== '') {
        $token = $env;
    }
    if ($token !== null && preg_match('/[\x00-\x1f\x7f]/', $token)) {
        // it goes into a header line: a control character would end it
        throw new YPTaskException("yptask: the 'token' option holds a control character");
    }
    return $token;
}

/** A payload of [] means "no fields": send it as {} rather than as an empty list. */
function yptask_payload(mixed $msg): mixed
{
    return $msg === [] ? new stdClass() : $msg;
}

/** Send one JSON-RPC request to the node and return its result, or throw YPTaskException. */
function yptask_request(string $method, array $params, float $timeout,
                        ?string $url = null, ?string $token = null): mixed
{
    static $next_id = 0;
    $url = $url ?? yptask_url();
    $id = ++$next_id;
    try {
        $body = json_encode(['jsonrpc' => '2.0', 'method' => $method, 'params' => $params,
                             'id' => $id],
                            JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION);
    } catch (JsonException $e) {
        throw new YPTaskException("yptask: cannot send $method: its message is not JSON ("
                                  . $e->getMessage() . ')');
    }
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\nAccept: application/json\r\n"
                    . ($token !== null ? "Authorization: Bearer $token\r\n" : ''),
        'content' => $body,
        'timeout' => $timeout,
        'ignore_errors' => true,  // read the JSON-RPC body of a 413 too
    ]]);
    $problem = null;
    set_error_handler(function (int $no, string $text) use (&$problem): bool {
        $problem = $text;
        return true;
    });
    try {
        $raw = file_get_contents($url, false, $context);
    } finally {
        restore_error_handler();
    }
    if ($raw === false) {
        throw new YPTaskException("yptask: cannot reach the node at $url: "
                                  . ($problem ?? 'no answer')
                                  . '; check that `yptask node` runs there, or set YPTASK_URL');
    }
    $status = 0;
    $headers = $http_response_header ?? [];
    if (isset($headers[0]) && preg_match('#^HTTP/\S+\s+(\d{3})#', $headers[0], $m)) {
        $status = (int) $m[1];
    }
    try {
        $answer = json_decode($raw, true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
    } catch (JsonException $e) {
        throw new YPTaskException("yptask: the node at $url answered HTTP $status without "
                                  . 'JSON-RPC; check that YPTASK_URL ends in /rpc');
    }
    if (!is_array($answer) || ($answer['jsonrpc'] ?? null) !== '2.0') {
        throw new YPTaskException("yptask: the node at $url did not answer JSON-RPC 2.0");
    }
    if (isset($answer['error']) && is_array($answer['error'])) {
        $error = $answer['error'];
        throw new YPTaskException((string) ($error['message'] ?? 'unknown error'),
                                  (int) ($error['code'] ?? 0), $error['data'] ?? null);
    }
    if (!array_key_exists('result', $answer) || ($answer['id'] ?? null) !== $id) {
        throw new YPTaskException("yptask: the node at $url answered without a result for $method");
    }
    return $answer['result'];
}
