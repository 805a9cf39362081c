#!/usr/bin/env escript
%% -*- erlang -*-
%%! -noshell -noinput
%%
%% echo_worker: a yptask worker written in Erlang, from the protocol alone.
%%
%% It proves a worker need not be Python: anything that speaks BERT-RPC over
%% two pipes will do. Run it as a task's argv, e.g.
%%
%%     WorkerSpec(["escript", "workers/erlang/echo_worker.escript"])
%%
%% Wire: {packet, 4} frames (a 4-byte big-endian length, then one term in
%% the external term format). Frames come in on fd 3 and go out on fd 4; with
%% YPTASK_USE_STDIO=1 (what the node sets for a task with use_stdio) on fds 0
%% and 1 instead. Nothing else is ever written to the protocol fd: the logger
%% is moved to stderr, and -noinput keeps the VM's own io server off stdin.
%%
%% The node is the client; this is the server of module `yptask`:
%%
%%   {call, yptask, setup, [Info]}            -> {reply, #{<<"pid">> => OsPid,
%%                                                         <<"handles">> => [...]}}
%%   {call, yptask, ping, []}                 -> {reply, pong}
%%   {call, yptask, handle, [Name, Payload, Meta]}, Name a binary, by its last
%%   dot-separated segment:
%%       echo   -> {reply, Payload}
%%       fail   -> {error, {user, 100, <<"error">>, Detail, Backtrace}}
%%                 Detail: Payload's <<"reason">> if given
%%       sleep  -> sleeps Payload's <<"seconds">>, then {reply, <<"slept">>}
%%       other  -> {error, {server, 100, <<"NoSuchHandler">>, ..., []}}
%%   another module                           -> {error, {server, 1, ...}}
%%   another function of yptask               -> {error, {server, 2, ...}}
%%   {cast, M, F, Args}                       -> {noreply}, then the work (its
%%                                               result or error is dropped)
%%   {info, Command, Options}                 -> ignored, never answered
%%   a frame that is no term                  -> {error, {protocol, 2, <<"DecodeError">>,
%%                                                        Detail, []}}, and serving goes on
%%   a term that is no packet                 -> {error, {protocol, 0, ...}}
%%
%% What yptask's codec sends: strings as binaries, dicts as maps, None as
%% {bert, nil}, True/False as {bert, true}/{bert, false}, atoms (module and
%% function names) as ATOM_EXT. Payloads are echoed back untouched.
%%
%% Frames are decoded with binary_to_term(Bin, [safe]), so a peer cannot fill
%% the atom table (the atoms yptask sends, bert and nil included, are made to
%% exist at load, see PEER_ATOMS). A call whose module or function is an atom
%% this VM has never seen therefore fails to decode; such a frame is recognised
%% by its head (read without creating atoms) and answered as the unknown module
%% or function it names. Any other frame naming unknown atoms (an Atom inside
%% a payload) gets the protocol DecodeError.
%%
%% One message at a time. End of input: exit 0. SIGTERM: the current message
%% is finished and answered, then exit 0. (SIGTERM reaches the VM's
%% erl_signal_server, whose default handler would call init:stop() and kill
%% this process mid-message; it is swapped for this module's gen_event
%% callbacks, which turn the signal into a message the loop reads between
%% messages. That needs a real module, hence -mode(compile), which costs about
%% 0.15 s of the ~0.35 s it takes from exec to the first answer.)

-mode(compile).

-export([init/1, handle_event/2, handle_call/2, handle_info/2, terminate/2,
         code_change/3]).

-define(HANDLES, [<<"handle_echo">>, <<"handle_fail">>, <<"handle_sleep">>]).

%% The atoms a yptask peer sends. `safe` decoding accepts only atoms that already
%% exist; naming them here puts them in the atom table when this module loads.
-define(PEER_ATOMS, [call, cast, info, yptask, setup, handle, ping,
                     bert, nil, true, false, dict, time]).

main(_) ->
    _ = ?PEER_ATOMS,
    ok = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}),
    ok = gen_event:swap_handler(erl_signal_server, {erl_signal_handler, []},
                                {?MODULE, self()}),
    ok = os:set_signal(sigterm, handle),
    Fds = case os:getenv("YPTASK_USE_STDIO") of
              "1" -> {fd, 0, 1};
              _ -> {fd, 3, 4}
          end,
    Port = open_port(Fds, [{packet, 4}, binary, eof]),
    loop(Port).

%% ------------------------------------------------------------------ the loop

loop(Port) ->
    receive
        stop_signal -> halt(0)
    after 0 ->
        receive
            stop_signal ->
                halt(0);
            {Port, {data, Frame}} ->
                serve(Port, Frame),
                loop(Port);
            {Port, eof} ->
                halt(0)
        end
    end.

serve(Port, Frame) ->
    case decode(Frame) of
        {ok, Packet} ->
            packet(Port, Packet);
        {error, Detail} ->
            send(Port, {error, {protocol, 2, <<"DecodeError">>, Detail, []}})
    end.

packet(Port, {call, Mod, Fun, Args}) when is_list(Args) ->
    send(Port, dispatch(Mod, Fun, Args));
packet(Port, {cast, Mod, Fun, Args}) when is_list(Args) ->
    send(Port, {noreply}),
    case dispatch(Mod, Fun, Args) of
        {error, Error} -> logger:warning("cast ~p:~p failed: ~tp", [Mod, Fun, Error]);
        _ -> ok
    end;
packet(_Port, {info, _Command, _Options}) ->
    ok;
packet(Port, Other) ->
    Detail = iolist_to_binary(io_lib:format("not a BERT-RPC call or cast: ~tP", [Other, 8])),
    send(Port, {error, {protocol, 0, <<"ProtocolError">>, Detail, []}}).

send(Port, Term) ->
    port_command(Port, term_to_binary(Term)).

%% ------------------------------------------------------------------ decoding

decode(Frame) ->
    try binary_to_term(Frame, [safe]) of
        Term -> {ok, Term}
    catch
        error:badarg ->
            case peek_call(Frame) of
                {ok, Head} -> {ok, Head};
                error -> {error, <<"frame is not a valid term (or names unknown atoms)">>}
            end
    end.

%% A call or cast that `safe` refused, read from its head without creating
%% atoms: a module other than yptask, or a function yptask does not have, cannot
%% be served whatever atoms the rest names, so the call is answered as such
%% (dispatch sees the name as a binary). Anything else stays a DecodeError.
peek_call(<<131, 104, 4, Rest0/binary>>) ->
    case atom_text(Rest0) of
        {ok, Kind, Rest1} when Kind =:= <<"call">>; Kind =:= <<"cast">> ->
            case atom_text(Rest1) of
                {ok, <<"yptask">>, Rest2} ->
                    case atom_text(Rest2) of
                        {ok, Fun, Rest3} ->
                            case lists:member(Fun, [<<"setup">>, <<"handle">>, <<"ping">>]) of
                                true -> error;
                                false -> {ok, {kind(Kind), yptask, Fun, unknown_args(Rest3)}}
                            end;
                        error ->
                            error
                    end;
                {ok, Mod, _} ->
                    {ok, {kind(Kind), Mod, unknown, []}};
                error ->
                    error
            end;
        _ ->
            error
    end;
peek_call(_) ->
    error.

kind(<<"call">>) -> call;
kind(<<"cast">>) -> cast.

%% As many placeholders as the argument list has elements (for the arity in the answer).
unknown_args(<<108, N:32, Rest/binary>>) -> lists:duplicate(min(N, byte_size(Rest)), unknown);
unknown_args(<<107, N:16, _/binary>>) -> lists:duplicate(N, unknown);
unknown_args(_) -> [].

atom_text(<<100, N:16, Text:N/binary, Rest/binary>>) -> {ok, Text, Rest};   % ATOM_EXT
atom_text(<<115, N:8, Text:N/binary, Rest/binary>>) -> {ok, Text, Rest};    % SMALL_ATOM_EXT
atom_text(<<118, N:16, Text:N/binary, Rest/binary>>) -> {ok, Text, Rest};   % ATOM_UTF8_EXT
atom_text(<<119, N:8, Text:N/binary, Rest/binary>>) -> {ok, Text, Rest};    % SMALL_ATOM_UTF8_EXT
atom_text(_) -> error.

%% ------------------------------------------------------------------ calls

dispatch(yptask, setup, [_Info]) ->
    {reply, #{<<"pid">> => list_to_integer(os:getpid()), <<"handles">> => ?HANDLES}};
dispatch(yptask, ping, []) ->
    {reply, pong};
dispatch(yptask, handle, [Name, Payload, Meta]) when is_binary(Name), is_map(Meta) ->
    handle(lists:last(binary:split(Name, <<".">>, [global])), Name, Payload);
dispatch(yptask, handle, [_, _, _]) ->
    server_error(102, <<"ConfigError">>,
                 <<"handle takes (Name :: binary, Payload, Meta :: map)">>);
dispatch(yptask, Fun, Args) ->
    server_error(2, <<"NoSuchFunction">>,
                 fmt("no function yptask:~ts/~B; a worker serves handle/3, setup/1 and ping/0",
                     [name(Fun), length(Args)]));
dispatch(Mod, _Fun, _Args) ->
    server_error(1, <<"NoSuchModule">>,
                 fmt("no module '~ts'; a worker serves module 'yptask'", [name(Mod)])).

handle(<<"echo">>, _Name, Payload) ->
    {reply, Payload};
handle(<<"fail">>, _Name, Payload) ->
    Detail = case Payload of
                 #{<<"reason">> := Reason} when is_binary(Reason) -> Reason;
                 #{<<"reason">> := Reason} -> fmt("~tp", [Reason]);
                 _ -> <<"told to fail">>
             end,
    try error({told_to_fail, Detail})
    catch error:Why:Stack -> user_error(<<"error">>, Detail, backtrace(error, Why, Stack))
    end;
handle(<<"sleep">>, _Name, Payload) ->
    case Payload of
        #{<<"seconds">> := Seconds} when is_number(Seconds), Seconds >= 0 ->
            timer:sleep(round(Seconds * 1000)),
            {reply, <<"slept">>};
        _ ->
            user_error(<<"badarg">>, <<"sleep takes #{<<\"seconds\">> => Number}">>, [])
    end;
handle(_, Name, _Payload) ->
    server_error(100, <<"NoSuchHandler">>, <<"no handler for ", Name/binary>>).

user_error(Class, Detail, Backtrace) ->
    {error, {user, 100, Class, Detail, Backtrace}}.

server_error(Code, Class, Detail) ->
    {error, {server, Code, Class, Detail, []}}.

backtrace(Class, Reason, Stack) ->
    [fmt("~p: ~tP", [Class, Reason, 6])
     | [fmt("  at ~p:~p/~B (~ts:~B)",
            [M, F, arity(A), proplists:get_value(file, Loc, "?"),
             proplists:get_value(line, Loc, 0)])
        || {M, F, A, Loc} <- Stack]].

arity(A) when is_list(A) -> length(A);
arity(A) -> A.

name(A) when is_atom(A) -> atom_to_binary(A, utf8);
name(B) when is_binary(B) -> B;
name(Other) -> fmt("~tp", [Other]).

fmt(Format, Args) ->
    unicode:characters_to_binary(io_lib:format(Format, Args)).

%% ------------------------------------------------------------------ SIGTERM
%% gen_event callbacks for erl_signal_server (swapped in for erl_signal_handler).

init({Loop, _OldHandlerState}) ->
    {ok, Loop}.

handle_event(sigterm, Loop) ->
    Loop ! stop_signal,
    {ok, Loop};
handle_event(_Signal, Loop) ->
    {ok, Loop}.

handle_call(_Request, Loop) ->
    {ok, ok, Loop}.

handle_info(_Info, Loop) ->
    {ok, Loop}.

terminate(_Reason, _Loop) ->
    ok.

code_change(_OldVsn, Loop, _Extra) ->
    {ok, Loop}.
